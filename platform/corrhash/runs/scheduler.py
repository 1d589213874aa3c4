"""ASHA with BUDGET_RULE's promise kept: a leader-default trial (runs/space.py) runs its full --epochs.

Its early rungs are still recorded, so the trials after it are judged against it, but it is never stopped: the
search is to end at least as good as the best family's default recipe, and a stopped default cannot promise that
(a rung decision between two near-equal values, e.g. the leader's start-up trial and its full-length rerun, may go
either way).
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from corrhash.runs.space import LEADER_DEFAULT
from corrhash.runs.spec import BUDGET_KIND


class LeaderSafeASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if (action == TrialScheduler.STOP and trial.config.get(BUDGET_KIND) == LEADER_DEFAULT
                and result.get(self._time_attr, 0) < self._max_t):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action
