"""Train a hashing model on prepared shards, on Ray Train workers, recorded in MLflow.

Examples:
  python jobs/train.py --data data/20ng --model corrsh --bits 64              # local Ray, ./mlflow.db
  python jobs/train.py --data data/20ng --num-workers 2 --cpus-per-worker 0.5 --name ng64
  ray job submit ... -- python jobs/train.py --data "$PWD/data/20ng" --storage "$PWD/runs/ray"  # see README
  python jobs/train.py --local --data data/20ng --out runs/ng64          # one plain process, no Ray/MLflow
  python jobs/train.py --data data/20ng --recipe authors                 # the authors' KL schedule (the paper)

The recipe (--recipe, default converge) sets the starting values of the KL schedule, learning rate and epochs;
any flag given wins over it (platform/corrhash/train/recipes.py).

The model is selected on validation precision@k (--eval-k, default 100); test precision is computed once for it. With
Ray, every epoch is checkpointed and a lost worker restarts the group from the last checkpoint;
running the same --name again resumes. The final model is logged to MLflow as a pyfunc model
(safetensors + JSON, loadable with corrhash.load("runs:/RUN_ID/model")).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import JobParser, add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.data.uri import absolute  # noqa: E402
from corrhash.errors import CorrhashError  # noqa: E402
from corrhash.models import ModelConfig  # noqa: E402
from corrhash.train import TrainConfig  # noqa: E402
from corrhash.runs.ray_train import RayConfig  # noqa: E402
from corrhash.runs.spec import JobInputs, RunSpec, parse_job_args  # noqa: E402


@dataclass
class TrainJobOptions:
    local: bool = False
    """train in this process (no Ray, no MLflow); writes OUT/metrics.jsonl too"""
    skip_test: bool = False
    """do not score the test split (exploratory runs select and report on val only)"""


def parse_args(argv=None):
    parser = JobParser(__doc__)
    add_dataclass_args(parser, JobInputs, "data, model family and output")
    add_dataclass_args(parser, TrainJobOptions, "how to run")
    add_dataclass_args(parser, ModelConfig, "model", skip=("name", "seed"))
    add_dataclass_args(parser, TrainConfig, "training")
    add_dataclass_args(parser, RayConfig, "Ray and MLflow")
    args = parse_job_args(parser, argv)
    inputs, options = dataclass_from_args(JobInputs, args), dataclass_from_args(TrainJobOptions, args)
    if options.local and inputs.out is None:
        parser.error("--local needs --out")
    model_config = dataclass_from_args(ModelConfig, args, name=inputs.model, seed=vars(args)["TrainConfig.seed"])
    return (inputs, options, model_config, dataclass_from_args(TrainConfig, args),
            dataclass_from_args(RayConfig, args))


def main(argv=None) -> int:
    try:
        inputs, options, model_config, train_config, ray_config = parse_args(argv)
        print(f"recipe: {inputs.recipe}\nmodel: {dataclasses.asdict(model_config)}\n"
              f"train: {dataclasses.asdict(train_config)}", flush=True)
        spec = RunSpec(absolute(inputs.data), model_config, train_config)
        if options.local:
            from corrhash.runs.local import run_local
            results = run_local(spec, inputs.out, score_test=not options.skip_test)
        else:
            print(f"ray: {dataclasses.asdict(ray_config)}", flush=True)
            from corrhash.runs.ray_train import train_on_ray
            results = train_on_ray(spec, ray_config, inputs.out, score_test=not options.skip_test)
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k = train_config.eval_k
    if results["test_precision"] is not None:
        print(f"test precision@{k}: {results['test_precision']:.4f} (tie-aware), "
              f"{results['test_precision_ordered']:.4f} (ordered)")
    print(f"val precision@{k}: {results['val_precision']:.4f} (best epoch {results['best_epoch']})")
    if results["model_uri"]:
        print(f"model: {results['model_uri']}  (MLflow run {results['run_id']})")
    return 0


if __name__ == "__main__":
    # `ray job stop` and `kill` send SIGTERM: exit through Python, so runs end KILLED and temporaries go.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
