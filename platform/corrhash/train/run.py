"""A whole training run in one process: load shards, fit, select on val, score test once, save."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from corrhash.artifact import save_model
from corrhash.atomic import replace_dir
from corrhash.device import resolve_device
from corrhash.errors import ConfigError, DataError
from corrhash.log import log
from corrhash.models import ModelConfig
from corrhash.train.config import TrainConfig
from corrhash.train.loop import Evaluator, fit
from corrhash.train.preflight import new_run_dir, read_vocab, training_shards


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def train_and_evaluate(data_dir: str | Path, model_config: ModelConfig, train_config: TrainConfig,
                       out_dir: str | Path, score_test: bool = True) -> dict:
    """Train on `train`, early-stop on `val`, then compute test precision@k once for the chosen weights
    (unless `score_test` is False: exploratory runs that must not look at test).

    Writes `out_dir/metrics.jsonl` (one line per epoch), `out_dir/model/` and `out_dir/results.json`.
    Data, device and `out_dir` are checked before anything is written; the run is built in a temporary
    sibling and moved to `out_dir` only when complete, so a failed rerun leaves the previous run whole."""
    started = time.monotonic()
    shards = training_shards(data_dir)
    vocab = read_vocab(shards)
    device = resolve_device(train_config.device)
    train, val, test = (shards.split(name) for name in ("train", "val", "test"))
    for split in (train, val, test):
        if len(split) == 0:
            raise DataError(f"{shards.root}: the {split.name} split has no documents")
    if train_config.eval_k > len(train):
        raise ConfigError(f"--eval-k {train_config.eval_k}: more than the {len(train)} train documents")
    log(f"data {data_dir}: train {len(train)}, val {len(val)}, test {len(test)}, {shards.n_features} features")
    run_dir = new_run_dir(out_dir)
    try:
        summary = _train_into(run_dir, shards, vocab, (train, val, test), device, model_config, train_config,
                              score_test, started)
        replace_dir(run_dir, out_dir)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return summary


def _train_into(run_dir: Path, shards, vocab: dict, splits, device, model_config: ModelConfig,
                train_config: TrainConfig, score_test: bool, started: float) -> dict:
    train, val, test = splits
    metrics_path = run_dir / "metrics.jsonl"

    def on_epoch(metrics: dict, state) -> None:
        _append_jsonl(metrics_path, metrics)
        val_text = f"val p@{train_config.eval_k} {metrics['val_precision']:.4f}" if "val_precision" in metrics else ""
        if "loss" not in metrics:  # an untrained model (lsh): one evaluation, no epoch
            log(f"{val_text} (no training)")
            return
        log(f"epoch {metrics['epoch']:3d}  loss {metrics['loss']:.2f} (recon {metrics['recon']:.2f}, "
            f"kl {metrics['kl']:.2f} x{metrics['kl_weight']:.3f})  {metrics['docs_per_s']:.0f} docs/s  {val_text}  "
            f"best {metrics['best_val_precision']:.4f} @ {metrics['best_epoch']}")

    result = fit(model_config, train_config, train, val=val, on_epoch=on_epoch)
    test_precision = Evaluator(train, test, device, train_config.eval_k)(result.model) if score_test else None
    test_text = (f"test p@{train_config.eval_k} {test_precision.tie_aware:.4f} (tie-aware), "
                 f"{test_precision.ordered:.4f} (ordered)" if test_precision else "test not scored")
    log(f"best epoch {result.best_epoch}: val p@{train_config.eval_k} {result.best_value:.4f}; {test_text}")
    summary = {
        "data": str(shards.root), "content_hash": shards.content_hash, "dataset": shards.manifest["dataset"],
        "model": model_config.to_dict(), "train": train_config.to_dict(),
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "val_precision": result.best_value,
        "test_precision": test_precision.tie_aware if test_precision else None,
        "test_precision_ordered": test_precision.ordered if test_precision else None,
        "fit_seconds": result.seconds, "wall_seconds": time.monotonic() - started,
        "device": str(device), "torch_threads": torch.get_num_threads(), "host": platform.node(),
        "pid": os.getpid(),
    }
    save_model(run_dir / "model", result.model, vocab,
               {"label_names": shards.label_names, "content_hash": shards.content_hash,
                "val_precision": result.best_value, "test_precision": summary["test_precision"]})
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
