"""One ablation cell, run inside a Ray task: the plain-process launcher (`runs.local.run_local`) on the cell's
spec, with its test codes. It talks to no MLflow: it reports to the driver through a Ray queue (`started` once per
attempt with its node, then each epoch's metrics), and returns what the driver records (`CellOutcome`).
"""

from __future__ import annotations

import platform
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from corrhash.ablate.grid import Cell
from corrhash.data import TfidfShards
from corrhash.device import resolve_device
from corrhash.launch.live import EpochExporter
from corrhash.runs.local import run_local
from corrhash.serve.hashing import HashingModel


@dataclass
class CellOutcome:
    """What a finished cell returns to the driver: its results.json, its per-epoch metrics.jsonl and packed test
    codes (logged as the run's artifacts), and the attempt they belong to."""

    cell_id: str
    attempt: str
    results: dict
    results_json: str
    metrics_jsonl: str
    test_codes: np.ndarray


def run_cell(cell_dict: dict, ablation: str, events) -> CellOutcome:
    """Run one cell; `events` (a `ray.util.queue.Queue` the driver drains) gets `("started", cell id, attempt,
    {"node", "host"})` first and `("epoch", cell id, attempt, metrics)` after each epoch. A retried task (its node
    died) is a new attempt, so the driver can tell its epochs from the lost one's."""
    import ray

    cell = Cell.from_dict(cell_dict)
    attempt = uuid.uuid4().hex
    events.put(("started", cell.id, attempt, {"node": ray.get_runtime_context().get_node_id(),
                                              "host": platform.node()}))
    spec = cell.spec()
    if resolve_device(spec.train.device).type == "cpu":
        torch.set_num_threads(spec.threads)
    export = EpochExporter(ablation, cell.id, 0, spec.model.name)  # live in Prometheus too

    def on_epoch(metrics: dict) -> None:
        events.put(("epoch", cell.id, attempt, metrics))
        export(metrics)

    with tempfile.TemporaryDirectory(prefix="corrhash-cell-") as tmp:
        out = Path(tmp) / "run"
        results = run_local(spec, out, on_epoch=on_epoch, launcher="ablate", job=ablation)
        test = TfidfShards(spec.data).split("test")
        codes = HashingModel(out / "model", spec.train.device).encode_features(test.features)  # packed
        return CellOutcome(cell.id, attempt, results, (out / "results.json").read_text(),
                           (out / "metrics.jsonl").read_text(), codes)
