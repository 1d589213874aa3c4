"""Training options (cleanrl style: one dataclass, a one-line docstring per field)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Literal

from corrhash.data.stream import STREAM_MODES
from corrhash.errors import ConfigError

StreamMode = Literal[STREAM_MODES]  # type: ignore[valid-type]  # the modes data/stream.py reads


@dataclass
class TrainConfig:
    epochs: int = 100
    """Most epochs to run (the authors' default); early stopping may end sooner."""
    batch_size: int = 100
    """Documents per optimizer step (the paper's 100)."""
    lr: float = 1e-3
    """Adam learning rate."""
    lr_decay: float = 0.96
    """Multiply the learning rate by this every `lr_decay_steps` steps (authors' code)."""
    lr_decay_steps: int = 10_000
    """Optimizer steps between learning-rate decays."""
    grad_clip: float = 0.0
    """Clip the gradients' global L2 norm to this before each step (0: no clipping)."""
    patience: int = 20
    """Stop after this many epochs without a better validation precision@k."""
    eval_k: int = 100
    """k of the validation precision@k used for model selection."""
    eval_every: int = 1
    """Evaluate on validation every this many epochs."""
    eval_queries: int = 0
    """Per-epoch selection scores a seeded sample of this many val queries (0: all); the chosen model's reported
    val precision is always over the whole val split."""
    stream: StreamMode = "auto"
    """Read each split from its shard files a few at a time instead of holding it whole: 'auto' streams a split
    that needs more than half the memory available, 'always', 'never'."""
    stream_buffer: int = 50_000
    """Streaming: train rows (whole shard files, in a seeded random order) shuffled together; more mixes better."""
    seed: int = 0
    """Seeds weight initialisation, batch order and every random draw of the loss."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr_decay_steps", "patience", "eval_k", "eval_every", "stream_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train option {name}={getattr(self, name)}: must be >= 1")
        # `not x > 0` rather than `x <= 0`: NaN fails every comparison and must be refused too.
        if self.eval_queries < 0:
            raise ConfigError(f"train option eval_queries={self.eval_queries}: must be >= 0 (0: every val document)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train option lr={self.lr}: must be a finite number > 0")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ConfigError(f"train option grad_clip={self.grad_clip}: must be a finite number >= 0 (0: off)")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"train option lr_decay={self.lr_decay}: must be in (0, 1]")
        if self.stream not in STREAM_MODES:
            raise ConfigError(f"train option stream={self.stream!r}: use one of {', '.join(STREAM_MODES)}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"train option device={self.device!r}: use auto, cpu, cuda or cuda:N")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)
