"""How every run ends, whichever launcher ran it: the weights chosen on validation are scored on test
once, saved as a model folder, published (to MLflow, when the launcher records), and described by one
`results.json` with the same keys from every launcher (`RESULT_KEYS`), written last and atomically.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from corrhash.artifact import save_model
from corrhash.atomic import atomic_write_text, replace_dir
from corrhash.data import TfidfShards
from corrhash.data.stream import open_split
from corrhash.models import HashModel
from corrhash.runs.spec import RunSpec
from corrhash.train import checkpoint
from corrhash.train.evaluate import Evaluator
from corrhash.train.loop import FitResult
from corrhash.launch.preflight import new_run_dir

RESULT_KEYS = ("launcher", "job", "run_id", "data", "dataset", "content_hash", "model", "train", "tuned",
               "eval_k", "best_epoch", "epochs_run", "val_precision", "test_precision", "test_precision_ordered",
               "epoch_seconds", "fit_seconds", "wall_seconds", "device", "host", "model_uri", "registered_version")


@dataclass
class Selection:
    """The weights chosen on validation, and the epochs that led to them."""

    model: HashModel
    best_epoch: int
    val_precision: float
    history: list[dict]

    @classmethod
    def from_fit(cls, result: FitResult) -> Selection:
        return cls(result.model, result.best_epoch, result.best_value, result.history)

    @classmethod
    def from_checkpoint(cls, directory: Path, spec: RunSpec, n_features: int) -> Selection:
        model, payload = checkpoint.best_model(directory, spec.model, n_features)
        return cls(model, payload["best_epoch"], float(payload["best_value"]), payload["history"])


@contextmanager
def run_folder(out: Path | None):
    """A temporary folder for a run's files: moved to `out` when the run succeeds (a previous run there is
    replaced only then), deleted when it fails or when there is no `out`."""
    folder = new_run_dir(out) if out else Path(tempfile.mkdtemp(prefix="corrhash-run-"))
    try:
        yield folder
        if out:
            replace_dir(folder, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already when it replaced `out`


def finish(spec: RunSpec, shards: TfidfShards, selection: Selection, folder: Path, *, launcher: str,
           started: float, fit_seconds: float, device: torch.device, score_test: bool = True,
           job: str | None = None, run_id: str | None = None, tuned: dict | None = None,
           publish: Callable[[Path, dict], dict] | None = None) -> dict:
    """Test once, save `folder/model`, publish it, write `folder/results.json`; returns the results.

    `publish(model_dir, results)` returns the keys it adds (`model_uri`, `registered_version`)."""
    k, train_config = spec.train.eval_k, spec.train

    def split(name: str):
        return open_split(shards, name, train_config.stream, train_config.stream_buffer)

    database, val = split("train"), split("val")
    if 0 < train_config.eval_queries < len(val):  # epochs were chosen on a sample: report the whole val split
        selection.val_precision = Evaluator(database, val, device, k)(selection.model).tie_aware
    test = Evaluator(database, split("test"), device, k)(selection.model) if score_test else None
    results = dict.fromkeys(RESULT_KEYS)
    results.update(
        launcher=launcher, job=job, run_id=run_id, data=str(shards.root), dataset=shards.manifest["dataset"],
        content_hash=shards.content_hash, model=spec.model.to_dict(), train=spec.train.to_dict(), tuned=tuned,
        eval_k=k, best_epoch=selection.best_epoch, epochs_run=len(selection.history),
        val_precision=selection.val_precision, test_precision=test.tie_aware if test else None,
        test_precision_ordered=test.ordered if test else None,
        epoch_seconds=[h.get("seconds") for h in selection.history], fit_seconds=fit_seconds,
        device=str(device), host=platform.node())
    model_dir = save_model(folder / "model", selection.model, shards.vocab, {
        "label_names": shards.label_names, "content_hash": shards.content_hash, "eval_k": k,
        "val_precision": selection.val_precision, "test_precision": results["test_precision"], "tuned": tuned,
        "job": job, "mlflow_run_id": run_id})
    if publish is not None:
        results.update(publish(model_dir, results))
    results["wall_seconds"] = time.monotonic() - started
    assert set(results) == set(RESULT_KEYS), sorted(set(results) ^ set(RESULT_KEYS))  # one schema
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2))
    return results
