"""The one epoch loop shared by every entry point (plain process, Ray Train, Tune)."""

from corrhash.train.config import TrainConfig
from corrhash.device import resolve_device  # kept in the training API: jobs/bench.py imports it from here
from corrhash.train.loop import Evaluator, FitResult, TrainState, fit, new_state

__all__ = ["Evaluator", "FitResult", "TrainConfig", "TrainState", "fit", "new_state", "resolve_device"]
