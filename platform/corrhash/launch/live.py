"""corrhash's live metrics, exported through Ray's metrics system.

`ray.util.metrics` hands each value to the node's metrics agent, which Prometheus scrapes (through the
service-discovery file Ray writes; see dashboards/README.md). Prometheus sees every name prefixed
`ray_` (`corrhash_train_docs_per_second` -> `ray_corrhash_train_docs_per_second`) and a counter suffixed
`_total`. The shipped Grafana panels (dashboards/grafana/) query exactly the names below.

A series lives as long as the process that sets it and reaches Prometheus at Ray's export interval
(10 s) and the scrape interval (10 s): a job shorter than that can end unseen. Outside Ray (a plain
`jobs/train.py --local`) every exporter does nothing.

Labels: `job_name` (the Train/Tune/ablation name, or the searched model; not `job`, which Prometheus gives
every scraped series), `run` (Tune trial id, ablation cell, or the Train run's name), `rank` (Ray Train
worker rank), `model` (the model family).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from functools import cache

TRAIN_TAGS = ("job_name", "run", "rank", "model")
LATENCY_BOUNDARIES_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def exporting() -> bool:
    """Whether this process is connected to Ray (a worker, a trial, a task or a connected driver)."""
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


@cache
def _instruments() -> dict:
    """One set of instruments per process (Ray registers a metric name once per process)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    return {
        "docs_per_second": Gauge("corrhash_train_docs_per_second",
                                 "Training throughput of one worker in its last epoch (documents per second).",
                                 tag_keys=TRAIN_TAGS),
        "epoch_seconds": Gauge("corrhash_train_epoch_seconds", "Wall time of the last training epoch (seconds).",
                               tag_keys=TRAIN_TAGS),
        "epoch": Gauge("corrhash_train_epoch", "Epochs completed.", tag_keys=TRAIN_TAGS),
        "docs": Counter("corrhash_train_documents", "Documents trained on (one count per document per epoch).",
                        tag_keys=TRAIN_TAGS),
        "loss": Gauge("corrhash_train_loss", "Mean loss term per document in the last epoch; term: loss|recon|kl.",
                      tag_keys=(*TRAIN_TAGS, "term")),
        "kl_weight": Gauge("corrhash_train_kl_weight", "KL annealing weight after the last epoch.",
                           tag_keys=TRAIN_TAGS),
        "val_precision": Gauge("corrhash_val_precision", "Validation precision@k (tie-aware) of the last evaluation.",
                               tag_keys=TRAIN_TAGS),
        "best_val_precision": Gauge("corrhash_val_best_precision", "Best validation precision@k so far.",
                                    tag_keys=TRAIN_TAGS),
        "trials": Gauge("corrhash_tune_trials",
                        "Tune trials by state: pending, running, finished, stopped_early, failed.",
                        tag_keys=("job_name", "state")),
        "cells": Gauge("corrhash_ablation_cells", "Ablation cells by state: done, running, pending, failed.",
                       tag_keys=("job_name", "state")),
        "queries": Counter("corrhash_search_queries", "Search queries answered.", tag_keys=("job_name",)),
        "latency": Histogram("corrhash_search_latency_seconds",
                             "Time from a query batch's arrival to its answers (seconds; each query of a batch "
                             "waits for the whole batch).", boundaries=LATENCY_BOUNDARIES_S, tag_keys=("job_name",)),
    }


class EpochExporter:
    """Called with each epoch's metrics dict (the loop's `on_epoch` record) by a worker, trial or cell."""

    def __init__(self, job: str, run: str, rank: int, model: str):
        self.tags = {"job_name": job, "run": run, "rank": str(rank), "model": model}

    def __call__(self, metrics: dict) -> None:
        if not exporting():
            return
        meters, tags = _instruments(), self.tags
        if metrics.get("seconds"):  # a trained epoch (a closed-form fit reports only its precision)
            meters["docs_per_second"].set(metrics["docs"] / metrics["seconds"], tags)
            meters["epoch_seconds"].set(metrics["seconds"], tags)
            meters["docs"].inc(metrics["docs"], tags)
            for term in ("loss", "recon", "kl", "neighbour"):  # neighbour: the -nbr models' pairwise term
                if term in metrics:
                    meters["loss"].set(metrics[term], {**tags, "term": term})
            meters["kl_weight"].set(metrics["kl_weight"], tags)
        meters["epoch"].set(metrics["epoch"], tags)
        if "val_precision" in metrics:
            meters["val_precision"].set(metrics["val_precision"], tags)
        if math.isfinite(metrics.get("best_val_precision", -math.inf)):
            meters["best_val_precision"].set(metrics["best_val_precision"], tags)


def export_counts(kind: str, job: str, counts: dict[str, int]) -> None:
    """Set the `trials` (Tune) or `cells` (ablation) gauge for every state in `counts`."""
    if exporting():
        gauge = _instruments()[kind]
        for state, count in counts.items():
            gauge.set(count, {"job_name": job, "state": state})


class SearchExporter:
    """Counts answered queries and their latency: `with exporter.timed(len(batch)): answer the batch`."""

    def __init__(self, job: str):
        self.tags = {"job_name": job}

    def record(self, queries: int, seconds: float) -> None:
        if exporting() and queries:
            meters = _instruments()
            meters["queries"].inc(queries, self.tags)
            for _ in range(queries):
                meters["latency"].observe(seconds, self.tags)

    @contextmanager
    def timed(self, queries: int):
        started = time.perf_counter()
        yield  # a batch that raises is not counted as answered
        self.record(queries, time.perf_counter() - started)
