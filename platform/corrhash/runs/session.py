"""The one difference between a Ray Train worker and a Tune trial: how it talks to Ray.

Both sessions answer the same questions (who am I, which job and run, which device, where do I resume
from, how do I report an epoch), so `worker.run_worker` is written once for both.
"""

from __future__ import annotations

import torch

from corrhash.device import resolve_device


class TrainSession:
    """A Ray Train worker: one of `world` ranks (DDP), on the device Ray Train assigned."""

    def __init__(self):
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.job = self.run = context.get_experiment_name()  # the job's --name
        quiet_train_reports()

    def device(self, requested: str) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()  # Ray Train sets CUDA_VISIBLE_DEVICES per worker

    def checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict, directory: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


class TuneSession:
    """A Tune trial: one process, on the requested device (`auto`: CUDA when the trial was given a GPU)."""

    rank, world = 0, 1

    def __init__(self, job: str):
        from ray import tune

        self.job = job  # the search's --name (a trial's own folder is Ray's local staging copy, not named so)
        self.run = tune.get_context().get_trial_id()
        quiet_loggers("ray.train._internal.storage")  # a "Checkpoint successfully created" line a trial's epoch

    def device(self, requested: str) -> torch.device:
        return resolve_device(requested)

    def checkpoint(self):
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict, directory: str) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def quiet_train_reports() -> None:
    """Ray Train's per-rank, per-epoch dumps on a worker, "Reporting training result N: TrainingReport(...)" and
    "Checkpoint successfully created at: ...", shown only with --verbose: rank 0 prints corrhash's epoch line
    instead (runs/worker.py). Ray's other lines (the worker group started or restarted) stay. The first is logged
    from a logger named by its file's path, outside the "ray.train" tree RunConfig's LoggingConfig filters (Ray
    2.60), so that could not do it."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a private module Ray may move: its lines come back, nothing breaks
        return
    quiet_loggers(context.__file__, "ray.train.v2._internal.execution.storage")


def quiet_loggers(*names: str) -> None:
    """Ray's INFO lines from these loggers shown only with --verbose."""
    import logging

    from corrhash.log import logger

    level = logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.WARNING
    for name in names:
        logging.getLogger(name).setLevel(level)
