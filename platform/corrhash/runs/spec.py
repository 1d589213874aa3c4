"""What a run is: the prepared data, the model and how to train it. One serialisable object.

A `RunSpec` crosses the Ray boundary as `to_dict()` (to a Ray Train worker's config, or into a
Tune trial through `tune.with_parameters`) and comes back with `from_dict`. A trial's tuned values
are applied with `with_overrides`, the only place that routes a flat name to its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from corrhash.cli import CLI
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig, list_models
from corrhash.train.config import TrainConfig

MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))
TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))


@dataclass
class JobInputs:
    """The options every training job (train, tune) shares besides the model and training configs."""

    data: str
    """folder written by jobs/prepare_data.py, or its URI (s3://, gs://, hdfs://, file://)"""
    out: Path | None = None
    """folder for results.json and the model (tune: the best trial's); required with train --local"""
    model: str = field(default="corrsh", metadata={CLI: {"choices": list_models()}})
    """model family"""


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
