"""The plain-process launcher: the whole run in this process, no Ray, no MLflow.

Writes OUT/metrics.jsonl (one line per epoch), OUT/model/ and OUT/results.json; the run is built in a
temporary sibling of OUT and moved there only when complete, so a failed rerun leaves the previous run whole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from corrhash.data import TfidfShards
from corrhash.data.stream import open_split
from corrhash.device import resolve_device
from corrhash.errors import ConfigError
from corrhash.log import log
from corrhash.runs.finish import Selection, finish, run_folder
from corrhash.runs.spec import RunSpec
from corrhash.train.loop import epoch_line, fit
from corrhash.train.neighbours import neighbour_source


def run_local(spec: RunSpec, out: Path, score_test: bool = True, *, on_epoch: Callable[[dict], None] | None = None,
              launcher: str = "local", job: str | None = None, run_id: str | None = None) -> dict:
    """Train on `train`, early-stop on `val`, then score test once for the chosen weights (unless
    `score_test` is False: exploratory runs that must not look at test). Inputs are checked first.

    `on_epoch(metrics)` also sees every epoch (an ablation cell puts them on its queue, and the driver logs them);
    `launcher`, `job` and `run_id` go into results.json for a caller that records the run elsewhere."""
    started = time.monotonic()
    shards = TfidfShards(spec.data)
    device = resolve_device(spec.train.device)
    # An empty split is a DataError here, before training: opening it (or listing its files) checks.
    train, val = (open_split(shards, name, spec.train.stream, spec.train.stream_buffer) for name in ("train", "val"))
    test_rows = sum(shards.rows_in(path) for path in shards.files("test"))
    if spec.train.eval_k > len(train):
        raise ConfigError(f"--eval-k {spec.train.eval_k}: more than the {len(train)} train documents")
    log(f"data {spec.data}: train {len(train)}, val {len(val)}, test {test_rows}, {shards.n_features} features")
    with run_folder(Path(out)) as folder:
        def record_epoch(metrics: dict, state) -> None:
            with open(folder / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
            log(epoch_line(metrics, spec.train.eval_k))
            if on_epoch is not None:
                on_epoch(metrics)

        neighbours = neighbour_source(shards, spec.model, train)  # a -nbr model's cached graph, else None
        result = fit(spec.model, spec.train, train, val=val, on_epoch=record_epoch, neighbours=neighbours)
        return finish(spec, shards, Selection.from_fit(result), folder, launcher=launcher, started=started,
                      fit_seconds=result.seconds, device=device, score_test=score_test, job=job, run_id=run_id)
