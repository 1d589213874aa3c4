"""The training library: the one epoch loop, its evaluator and checkpoint format; no Ray, no MLflow."""

from corrhash.train.config import TrainConfig
from corrhash.train.evaluate import Evaluator
from corrhash.train.loop import FitResult, TrainState, fit, new_state

__all__ = ["Evaluator", "FitResult", "TrainConfig", "TrainState", "fit", "new_state"]
