"""Search hashing models and their training recipes with Ray Tune + Optuna; register the best as the champion.

Examples:
  python jobs/tune.py --data data/20ng --bits 64 --num-samples 16 --name ng64-tune
  python jobs/tune.py --data data/reuters --models corrsh,nash,bmsh,sth --num-samples 24 --max-epochs 60
  ray job submit ... -- python jobs/tune.py --data "$PWD/data/20ng" --storage "$PWD/runs/tune"  # see README
  python jobs/tune.py --data data/20ng --space lr=loguniform:3e-4:3e-3 --space rank=choice:0,10

Each model declares its own default space (its recipe dimensions and its own, e.g. CorrSH's rank v and mixture k;
STH's neighbours and SVM C; `python -c "import corrhash.models as m; print(m.model_class('corrsh').search_space)"`).
--models searches several at once: one Optuna study whose conditional space picks the model (by the budget rule
below), then that model's dimensions (named MODEL.DIM). Override a dimension with --space NAME=SPEC (NAME or MODEL.NAME) or --space-file
YAML; a dimension's own flag, e.g. --dropout 0.1, pins it. ASHA stops weak trials early on val precision@k, with
epochs as the fidelity (a closed-form model's trial reports once and ends) and --max-epochs as the top. Each trial
is one MLflow child run of the job's parent run, which records each model's best trial. The best trial (by val
precision, across models) is scored once on test, logged, and registered as a new version of
corrhash-DATASET-BITSb (or --registered-model); the alias `champion` moves to it only if its val precision beats
the current champion's. A trial is one process (Tune's function trainable) on --cpus-per-trial CPUs or a share of a
GPU (--gpus-per-trial 0.25 packs four), not a Ray Train worker group.
Starting the same --name again resumes an interrupted search.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import tyro

from corrhash import commands
from corrhash.data.files import absolute
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig
from corrhash.runs.space import BUDGET_RULE, TUNABLE, model_names, model_spaces, space_params
from corrhash.runs.spec import JobInputs, RunSpec, job_configs
from corrhash.runs.tune import TuneOptions
from corrhash.train import TrainConfig

# The model and training flags: each None unless given, so that a flag given wins over the recipe and pins its
# search dimension.
ModelFlags = commands.optional_flags(ModelConfig, skip=("name", "seed"))
TrainFlags = commands.optional_flags(TrainConfig)


@dataclass
class SpaceOptions:
    models: str | None = None
    """search these models together, comma-separated (corrsh,nash,bmsh,sth) or 'all' (default: --model alone)"""
    max_epochs: int | None = None
    """the budget's top: most epochs of any trial and ASHA's max_t (default: --epochs)"""
    space: Annotated[list[str], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="NAME=SPEC")] = field(
        default_factory=list)
    """override one search dimension (repeatable), e.g. dropout=uniform:0:0.3, corrsh.rank=choice:0,10"""
    space_file: Path | None = None
    """YAML mapping NAME: SPEC overriding the models' default spaces"""

    def __post_init__(self) -> None:
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"--max-epochs {self.max_epochs}: must be >= 1")


@dataclass
class TuneJob:
    inputs: JobInputs
    """data, model family and output"""
    space: SpaceOptions = field(default_factory=SpaceOptions)
    """search space"""
    tune: TuneOptions = field(default_factory=TuneOptions)
    """search, Ray and MLflow"""
    model: ModelFlags = field(default_factory=ModelFlags)  # type: ignore[valid-type]
    """model (a flag pins that search dimension; default shown: the dataclass's, and the recipe's value is used
    where it sets one, e.g. converge's 150 epochs)"""
    train: TrainFlags = field(default_factory=TrainFlags)  # type: ignore[valid-type]
    """training (a flag pins that search dimension; default shown: the dataclass's, and the recipe's value is
    used where it sets one: the printed config line says what ran)"""


def parse_args(argv=None):
    job = commands.parse(TuneJob, __doc__ + "\n" + BUDGET_RULE, argv, title="tune")
    inputs, space = job.inputs, job.space
    models = model_names(space.models) if space.models else [inputs.model]
    given = {**commands.given(job.model), **commands.given(job.train)}
    model, train = job_configs(inputs.recipe, models[0], given)
    if space.max_epochs is not None:
        train = replace(train, epochs=space.max_epochs)
    spec = RunSpec(absolute(inputs.data), model, train)
    pinned = {name: value for name, value in given.items() if name in TUNABLE}  # a flag given pins its dimension
    spaces = model_spaces(models, space.space_file, space.space, pinned)
    return inputs, spec, spaces, job.tune


def main(argv=None) -> int:
    def job() -> None:
        inputs, spec, spaces, options = parse_args(argv)
        print(f"recipe: {inputs.recipe}\nmodel: {dataclasses.asdict(spec.model)}\n"
              f"train: {dataclasses.asdict(spec.train)}\n"
              f"space (its fixed values and draws override the configs above): {space_params(spaces)}", flush=True)
        from corrhash.runs.tune import run_tune
        results = run_tune(spec, spaces, options, inputs.out)
        print(json.dumps(results, default=str))

    return commands.run(job)
