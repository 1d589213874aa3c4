"""Train a hashing model on prepared shards, on Ray Train workers, recorded in MLflow.

Examples:
  python jobs/train.py --data data/20ng --model corrsh --bits 64              # local Ray, ./mlflow.db
  python jobs/train.py --data data/20ng --num-workers 2 --cpus-per-worker 0.5 --name ng64
  ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py --data /abs/data/20ng
  python jobs/train.py --local --data data/20ng --out runs/ng64          # one plain process, no Ray/MLflow

The model is selected on validation precision@100; test precision is computed once for it. With
Ray, every epoch is checkpointed and a lost worker restarts the group from the last checkpoint;
running the same --name again resumes. The final model is logged to MLflow as a pyfunc model
(safetensors + JSON, loadable with corrhash.load("runs:/RUN_ID/model")).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.errors import CorrhashError  # noqa: E402
from corrhash.models import ModelConfig, list_models  # noqa: E402
from corrhash.train import TrainConfig  # noqa: E402
from corrhash.train.ray_run import RayConfig  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder written by jobs/prepare_data.py")
    parser.add_argument("--out", type=Path, help="folder for results.json and the model (required with --local)")
    parser.add_argument("--local", action="store_true",
                        help="train in this process (no Ray, no MLflow); writes OUT/metrics.jsonl too")
    parser.add_argument("--skip-test", action="store_true",
                        help="do not score the test split (exploratory runs select and report on val only)")
    parser.add_argument("--model", default="corrsh", choices=list_models(), help="model name (default: corrsh)")
    add_dataclass_args(parser, ModelConfig, "model", skip=("name", "seed"))
    add_dataclass_args(parser, TrainConfig, "training")
    add_dataclass_args(parser, RayConfig, "Ray and MLflow")
    args = parser.parse_args(argv)
    if args.local and args.out is None:
        parser.error("--local needs --out")
    model_config = dataclass_from_args(ModelConfig, args, name=args.model, seed=vars(args)["TrainConfig.seed"])
    return args, model_config, dataclass_from_args(TrainConfig, args), dataclass_from_args(RayConfig, args)


def main(argv=None) -> int:
    try:
        args, model_config, train_config, ray_config = parse_args(argv)
        print(f"model: {dataclasses.asdict(model_config)}\ntrain: {dataclasses.asdict(train_config)}", flush=True)
        if args.local:
            from corrhash.train.run import train_and_evaluate
            summary = train_and_evaluate(args.data, model_config, train_config, args.out, score_test=not args.skip_test)
        else:
            print(f"ray: {dataclasses.asdict(ray_config)}", flush=True)
            from corrhash.train.ray_run import train_on_ray
            summary = train_on_ray(args.data, model_config, train_config, ray_config, args.out,
                                   score_test=not args.skip_test)
    except (CorrhashError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k = train_config.eval_k
    if summary["test_precision"] is not None:
        print(f"test precision@{k}: {summary['test_precision']:.4f} (tie-aware), "
              f"{summary['test_precision_ordered']:.4f} (ordered)")
    print(f"val precision@{k}: {summary['val_precision']:.4f} (best epoch {summary['best_epoch']})")
    if "model_uri" in summary:
        print(f"model: {summary['model_uri']}  (MLflow run {summary['run_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
