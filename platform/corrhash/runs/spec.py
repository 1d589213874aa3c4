"""What a run is: the prepared data, the model and how to train it. One serialisable object.

A `RunSpec` crosses the Ray boundary as `to_dict()` (to a Ray Train worker's config, or into a
Tune trial through `tune.with_parameters`) and comes back with `from_dict`. A trial's tuned values
are applied with `with_trial` (its config as the search named it: `model`, `MODEL.DIM` over several
models) and `with_overrides`, the only place that routes a flat name to its config.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

from corrhash.errors import ConfigError
from corrhash.models import ModelConfig, list_models, model_class
from corrhash.train.config import TrainConfig
from corrhash.train.recipes import DEFAULT_RECIPE, RECIPE_NAMES, recipe_values

MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))
TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))
ModelName = Literal[tuple(list_models())]  # type: ignore[valid-type]  # the registered models
RecipeName = Literal[RECIPE_NAMES]  # type: ignore[valid-type]


@dataclass
class JobInputs:
    """The options every training job (train, tune) shares besides the model and training configs."""

    data: str
    """folder written by jobs/prepare_data.py, or its URI (s3://, gs://, hdfs://, file://)"""
    out: Path | None = None
    """folder for results.json and the model (tune: the best trial's; train --local: required)"""
    model: ModelName = "corrsh"
    """model family"""
    recipe: RecipeName = DEFAULT_RECIPE
    """starting values of the training recipe, before the flags: 'converge' (KL at full weight within the budget,
    train/recipes.py) or 'authors' (the authors' schedule, for reproducing the paper)"""


def job_configs(recipe: str, model: str, given: dict) -> tuple[ModelConfig, TrainConfig]:
    """A training job's configs: the dataclasses' defaults, then the values of `recipe`, then the model's own recipe
    (`HashModel.recipe`), then `given` ({field: value}
    of ModelConfig or TrainConfig, the flags given on the command line), which win over the recipe. The model is
    `model`, seeded with the training seed."""
    values = {**recipe_values(recipe), **model_class(model).recipe, **given}
    train = TrainConfig(**{k: v for k, v in values.items() if k in TRAIN_FIELDS})
    model_values = {k: v for k, v in values.items() if k in MODEL_FIELDS - {"name", "seed"}}
    return ModelConfig(name=model, seed=train.seed, **model_values), train


BUDGET_KIND = "budget"
"""A trial config's key for its kind under runs/space.BUDGET_RULE (start-up, leader default, search): not a field."""


def trial_values(config: dict) -> dict:
    """A trial's config as flat config fields: `model` (a search over several models) becomes `name`, `budget` (the
    trial's kind under runs/space.BUDGET_RULE) is left out, and `MODEL.DIM` becomes `DIM` (only the trial's own
    model's dimensions are ever drawn)."""
    model = config.get("model")
    values = {"name": model} if model is not None else {}
    for key, value in config.items():
        if key in ("model", BUDGET_KIND):
            continue
        owner, dot, dim = key.rpartition(".")
        if dot and owner != model:
            raise ConfigError(f"trial value {key}: belongs to model {owner!r}, but the trial trains {model!r}")
        values[dim if dot else key] = value
    return values


@dataclass(frozen=True)
class RunSpec:
    data: str
    """Absolute path of the folder written by jobs/prepare_data.py."""
    model: ModelConfig
    train: TrainConfig
    threads: int = 1
    """torch threads of a worker or trial on the CPU: the CPUs it was given (contention otherwise)."""

    def to_dict(self) -> dict:
        return {"data": self.data, "model": self.model.to_dict(), "train": self.train.to_dict(),
                "threads": self.threads}

    @classmethod
    def from_dict(cls, values: dict) -> RunSpec:
        return cls(data=values["data"], model=ModelConfig.from_dict(values["model"]),
                   train=TrainConfig.from_dict(values["train"]), threads=int(values.get("threads", 1)))

    def with_trial(self, config: dict) -> RunSpec:
        """This spec as a Tune trial with `config` (see `trial_values`) trains it."""
        return self.with_overrides(trial_values(config))

    def with_overrides(self, values: dict) -> RunSpec:
        """This spec with flat `{name: value}` (e.g. a trial's tuned values) set on ModelConfig or TrainConfig."""
        model, train = {}, {}
        for name, value in values.items():
            if name in MODEL_FIELDS and name in TRAIN_FIELDS:
                raise ConfigError(f"{name}: both a model and a train option; it cannot be overridden by name")
            if name in MODEL_FIELDS:
                model[name] = value
            elif name in TRAIN_FIELDS:
                train[name] = value
            else:
                raise ConfigError(f"{name}: neither a model nor a train option")
        return replace(self, model=ModelConfig.from_dict({**self.model.to_dict(), **model}),
                       train=TrainConfig.from_dict({**self.train.to_dict(), **train}))
