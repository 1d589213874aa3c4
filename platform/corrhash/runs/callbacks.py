"""Ray's driver-side hooks, feeding MLflow through `corrhash.tracking.runs` (workers never touch it).

`EpochMetrics` runs in the Ray Train controller (an actor on the driver's node) after every epoch
that all workers reported, and logs rank 0's metrics to the job's run. `TrialRuns` runs in the Tune
driver: one child run per trial, created when the trial starts (or found again by its trial tag
after a restore), fed every result, and ended when the trial ends: FINISHED, FAILED, or FINISHED
with `corrhash.stopped_by = scheduler` when ASHA stopped it early. `TrialStates` runs beside it and
exports the trials' counts by state as a live metric (`launch/live.py`).
"""

from __future__ import annotations

from ray.train import UserCallback
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.logger import LoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS

from corrhash.launch.live import export_counts
from corrhash.runs.spec import BUDGET_KIND, RunSpec
from corrhash.tracking.runs import EpochLog, client_for, end_run, end_trial_runs, log_epoch, trial_run

TUNE_KEYS = frozenset(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}


def stopped_early(trial, spec: dict) -> bool:
    """Whether the scheduler stopped a trial that ended without error. A trial ends on its own after its
    last epoch or `patience` epochs without a better val; ending sooner means the scheduler stopped it."""
    last = trial.last_result or {}
    train = RunSpec.from_dict(spec).with_trial(trial.config).train
    return "epoch" in last and last["epoch"] < train.epochs and last["epoch"] - last.get("best_epoch", 0) < train.patience


class EpochMetrics(UserCallback):
    """UserCallback is a Ray DeveloperAPI: if it changes, this class is the one place to adapt. An MLflow outage
    does not stop training (EpochLog: said once, the epochs missed recorded when the job ends)."""

    def __init__(self, uri: str, run_id: str):
        self.log = EpochLog(uri, run_id)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.log(metrics[0], step=metrics[0]["epoch"])


class TrialRuns(LoggerCallback):
    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, spec: RunSpec):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.spec = spec.to_dict()
        self.run_ids: dict[str, str] = {}
        self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "run_ids": {}}  # Tune pickles its callbacks with its state

    def _trial_spec(self, trial) -> RunSpec:
        return RunSpec.from_dict(self.spec).with_trial(trial.config)

    @property
    def client(self):
        self._client = self._client or client_for(self.uri)
        return self._client

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            spec = self._trial_spec(trial)
            tags = {"model": spec.model.name}
            if BUDGET_KIND in trial.config:  # a search over several models: the trial's kind under BUDGET_RULE
                tags[BUDGET_KIND] = trial.config[BUDGET_KIND]
            self.run_ids[trial.trial_id] = trial_run(
                self.client, self.experiment_id, self.parent_run_id, trial.trial_id, str(trial),
                {"model": spec.model.to_dict(), "train": spec.train.to_dict()}, tags)
        return self.run_ids[trial.trial_id]

    def log_trial_start(self, trial) -> None:
        self._run_id(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        metrics = {k: v for k, v in result.items() if k not in TUNE_KEYS}
        log_epoch(self.client, self._run_id(trial), metrics, step=result["epoch"])

    def log_trial_end(self, trial, failed: bool = False) -> None:
        stopped = not failed and stopped_early(trial, self.spec)
        end_run(self.client, self._run_id(trial), "FAILED" if failed else "FINISHED",
                {"corrhash.stopped_by": "scheduler"} if stopped else None)

    def end_all(self, results) -> None:
        """After the search: every trial's run ends as its trial did, whatever a stop and restore skipped."""
        statuses = {result.metrics["trial_id"]: "FAILED" if result.error else "FINISHED"
                    for result in results if result.metrics and "trial_id" in result.metrics}
        end_trial_runs(self.client, self.experiment_id, self.parent_run_id, statuses)


class TrialStates(Callback):
    """After every step of the search: the trials pending (including those the searcher has yet to
    suggest), running, finished, stopped early and failed, as `corrhash_tune_trials{job, state}`."""

    def __init__(self, job: str, num_samples: int, spec: RunSpec):
        self.job, self.num_samples, self.spec = job, num_samples, spec.to_dict()

    def counts(self, trials: list) -> dict[str, int]:
        counts = dict.fromkeys(("pending", "running", "finished", "stopped_early", "failed"), 0)
        for trial in trials:
            if trial.status == Trial.TERMINATED:
                counts["stopped_early" if stopped_early(trial, self.spec) else "finished"] += 1
            elif trial.status == Trial.ERROR:
                counts["failed"] += 1
            elif trial.status in (Trial.RUNNING, Trial.PAUSED):
                counts["running"] += 1
            else:
                counts["pending"] += 1
        counts["pending"] += max(0, self.num_samples - len(trials))
        return counts

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        export_counts("trials", self.job, self.counts(trials))

    def on_experiment_end(self, trials: list, **info) -> None:
        self.on_step_end(0, trials)
