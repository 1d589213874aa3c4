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
from dataclasses import dataclass, field

from corrhash import commands
from corrhash.data.files import absolute
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig
from corrhash.runs.ray_train import RayConfig
from corrhash.runs.spec import JobInputs, RunSpec, job_configs
from corrhash.train import TrainConfig

# The model and training flags: each None unless given, so that only a flag given wins over the recipe.
ModelFlags = commands.optional_flags(ModelConfig, skip=("name", "seed"))
TrainFlags = commands.optional_flags(TrainConfig)


@dataclass
class TrainJobOptions:
    local: bool = False
    """train in this process (no Ray, no MLflow); writes OUT/metrics.jsonl too"""
    skip_test: bool = False
    """do not score the test split (exploratory runs select and report on val only)"""


@dataclass
class TrainJob:
    inputs: JobInputs
    """data, model family and output"""
    how: TrainJobOptions = field(default_factory=TrainJobOptions)
    """how to run"""
    model: ModelFlags = field(default_factory=ModelFlags)  # type: ignore[valid-type]
    """model (default: the recipe's value, else the dataclass default)"""
    train: TrainFlags = field(default_factory=TrainFlags)  # type: ignore[valid-type]
    """training (default: the recipe's value, else the dataclass default)"""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray and MLflow"""

    def __post_init__(self) -> None:
        if self.how.local and self.inputs.out is None:
            raise ConfigError("--local needs --out")


def parse_args(argv=None):
    job = commands.parse(TrainJob, __doc__, argv, title="train")
    model, train = job_configs(job.inputs.recipe, job.inputs.model,
                               {**commands.given(job.model), **commands.given(job.train)})
    return job.inputs, job.how, model, train, job.ray


def main(argv=None) -> int:
    return commands.run(lambda: train(*parse_args(argv)))


def train(inputs: JobInputs, options: TrainJobOptions, model_config: ModelConfig, train_config: TrainConfig,
          ray_config: RayConfig) -> None:
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
    k = train_config.eval_k
    if results["test_precision"] is not None:
        print(f"test precision@{k}: {results['test_precision']:.4f} (tie-aware), "
              f"{results['test_precision_ordered']:.4f} (ordered)")
    print(f"val precision@{k}: {results['val_precision']:.4f} (best epoch {results['best_epoch']})")
    if results["model_uri"]:
        print(f"model: {results['model_uri']}  (MLflow run {results['run_id']})")
