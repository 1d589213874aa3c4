"""Cluster-wide ablations: every cell of a grid (ablate/grid.py) is one Ray task (ablate/cell.py), packed onto the
cluster's nodes by the CPUs and (fractional) GPUs the grid asks per cell, and recorded by this driver as one MLflow
child run of the ablation's parent run.

Why tasks and not Tune's grid: a cell is a whole plain-process run (the one epoch loop, `finish`'s test scoring
and model folder), with no search, scheduler or per-trial checkpoint to manage; a task is the smallest unit Ray
packs by resources and retries when its node dies (`max_retries`), which is all a grid needs.

MLflow one way: cells never talk to MLflow. Each attempt of a cell reports its start (and node) and its epochs
through a Ray queue, and returns its results; the driver turns them into the cell's run: created when the attempt
starts (runs an earlier attempt left unfinished are deleted then), fed its epochs live, ended FINISHED when the task
returns. So each cell ends with exactly one run, FINISHED, and the driver submits only cells without one: rerunning
a completed ablation starts no cell.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corrhash.ablate.cell import CellOutcome, run_cell
from corrhash.ablate.grid import Cell, Grid
from corrhash.data import TfidfShards
from corrhash.errors import ConfigError, CorrhashError
from corrhash.launch.connect import user_error
from corrhash.launch.job import ClusterOptions, Job, launch_job
from corrhash.launch.live import export_counts
from corrhash.launch.preflight import check_job_name, check_local_folder
from corrhash.log import log
from corrhash.retrieval.codes import unpack_codes
from corrhash.tracking.lineage import source_tags
from corrhash.tracking.run_report import cell_codes, find_job_run, finished_cells
from corrhash.tracking.runs import (ABLATION_TAG, CELL_TAG, NODE_TAG, cell_runs, client_for, end_run, log_epoch,
                                    log_file, record_cell, start_cell_run, tracking_uri)

PROGRESS_EVERY_S = 15.0
EVENTS_EVERY_S = 1.0  # how often the driver drains the cells' events (a cell's run appears within this)
PROJECTED = ("vdsh", "nash", "corrsh")


@dataclass
class AblateOptions:
    cluster: ClusterOptions = field(default_factory=lambda: ClusterOptions(experiment="corrhash-ablations"))
    """Ray cluster and MLflow (the experiment of the ablation's parent run and its cells' child runs)"""
    max_retries: int = 3
    """Times Ray reruns a cell whose worker or node died (a cell that raises is not retried)."""
    out: Path = Path("runs/ablations")
    """Folder under which the ablation's report folder (named after it) is written."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries {self.max_retries}: must be >= 0")


def run_ablation(grid: Grid, options: AblateOptions, command: str | None = None) -> Path:
    """Run the cells of `grid` without a FINISHED run, then write the report; returns the report folder."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = check_job_name(grid.name)
    params = {"grid": str(grid.source), "cells": len(grid.cells), "axes": ",".join(grid.axis_names)}
    fits = [(f"cell {cell.label()} (cpus {cell.cpus:g}, gpus {cell.gpus:g})", cell.cpus, cell.gpus)
            for cell in grid.cells]
    with launch_job(options.cluster, name, storage=str(options.out), storage_option="--out",
                    lock_root=str(options.out.absolute() / ".locks"),  # one live ablation per name
                    params=params, tags={ABLATION_TAG: name}, fits=lambda: fits,
                    data={f"{grid.source}: data.{cell.dataset}": cell.data for cell in grid.cells}) as job:
        client, parent_id = job.client, job.run_id
        log_file(client, parent_id, grid.source, "grid")
        done = {run.data.tags[CELL_TAG] for run in cell_runs(client, job.experiment_id, parent_id)
                if run.info.status == "FINISHED"}
        todo = [cell for cell in grid.cells if cell.id not in done]
        log(f"ablation {name}: MLflow run {parent_id} at {job.uri}{' (resumed)' if job.resumed else ''}; "
            f"{len(grid.cells)} cells, {len(done & {c.id for c in grid.cells})} already finished, {len(todo)} to run")
        # The queue lives on the driver's node: a lost worker node must not take the cells' reports with it.
        events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)})
        remote = ray.remote(run_cell)
        pending = {remote.options(num_cpus=cell.cpus, num_gpus=cell.gpus, max_retries=options.max_retries,
                                  retry_exceptions=False, name=f"cell {cell.label()}")
                   .remote(cell.to_dict(), name, events): cell for cell in todo}
        failed = CellRecorder(job, events, source_tags()).wait(pending, len(grid.cells))
        folder = write_ablation_report(grid, client, job.experiment_id, parent_id, options.out / name, command)
        for path in sorted(folder.iterdir()):
            log_file(client, parent_id, path, "report")
        if failed:
            raise failed[0][1] if len(failed) == 1 else CorrhashError(
                f"ablation {name}: {len(failed)} cells failed: " + "; ".join(f"{c.label()}: {e}" for c, e in failed))
    log(f"ablation {name}: report {folder / 'report.md'}")
    return folder


class CellRecorder:
    """The driver's side of the cells: each attempt's events and returned outcome become its MLflow run."""

    def __init__(self, job: Job, events, source: dict[str, str]):
        self.job, self.events, self.source = job, events, source  # `source`: the driver's lineage tags
        self.attempts: dict[str, tuple[str, str]] = {}  # cell id -> (current attempt, its run id)

    def wait(self, pending: dict, total: int) -> list:
        """Wait for every task, recording each cell and printing (and exporting as `corrhash_ablation_cells`) cells
        done / running / pending and the best so far; returns the failures."""
        import ray

        cells = {cell.id: cell for cell in pending.values()}
        failed, last = [], 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=EVENTS_EVERY_S)
            self.drain(cells)  # a finished task put all its events before returning
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    self.record(cell, ray.get(ref))
                except Exception as exc:  # a cell's own error (bad data, a diverging loss): the others go on
                    cause = user_error(exc)
                    if cause is None and not isinstance(exc, ray.exceptions.RayError):
                        raise
                    failed.append((cell, cause or exc))
                    if cell.id in self.attempts:
                        end_run(self.job.client, self.attempts[cell.id][1], "FAILED")
                    log(f"cell {cell.label()} failed: {cause or exc}")
            if time.monotonic() - last >= PROGRESS_EVERY_S or not pending:
                last = time.monotonic()
                self.progress(total, failed)
        return failed

    def drain(self, cells: dict[str, Cell]) -> None:
        size = self.events.qsize()
        for kind, cell_id, attempt, payload in self.events.get_nowait_batch(size) if size else []:
            if kind == "started":
                self.attempts[cell_id] = (attempt, self.start(cells[cell_id], payload))
            elif self.attempts.get(cell_id, ("",))[0] == attempt:  # a lost attempt's late epochs are dropped
                log_epoch(self.job.client, self.attempts[cell_id][1], payload, step=payload["epoch"])

    def start(self, cell: Cell, where: dict) -> str:
        spec = cell.spec()
        tags = {**self.source, ABLATION_TAG: self.job.name, NODE_TAG: where["node"], "host": where["host"],
                **{f"axis.{k}": str(v) for k, v in cell.axes.items()}}
        params = {"model": spec.model.to_dict(), "train": spec.train.to_dict(), "data": spec.data, "cell": cell.id,
                  "resources": {"cpus": cell.cpus, "gpus": cell.gpus}}
        return start_cell_run(self.job.client, self.job.experiment_id, self.job.run_id, cell.id, cell.label(), tags,
                              params)

    def record(self, cell: Cell, outcome: CellOutcome) -> None:
        attempt, run_id = self.attempts[cell.id]
        if outcome.attempt != attempt:
            raise CorrhashError(f"cell {cell.label()}: returned attempt {outcome.attempt}, not the started {attempt}")
        results = {**outcome.results, "run_id": run_id}
        with tempfile.TemporaryDirectory(prefix="corrhash-cell-") as tmp:
            files = [Path(tmp) / name for name in ("results.json", "metrics.jsonl", "test_codes.npy")]
            files[0].write_text(json.dumps({**json.loads(outcome.results_json), "run_id": run_id}, indent=2))
            files[1].write_text(outcome.metrics_jsonl)
            np.save(files[2], outcome.test_codes, allow_pickle=False)  # packed; for the code projections
            seconds = [s for s in results["epoch_seconds"] if s is not None]
            record_cell(self.job.client, run_id, results, files, {
                "fit_seconds": results["fit_seconds"], **({"mean_epoch_seconds": float(np.mean(seconds))}
                                                          if seconds else {})})

    def progress(self, total: int, failed: list) -> None:
        runs = cell_runs(self.job.client, self.job.experiment_id, self.job.run_id)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        running = sum(r.info.status == "RUNNING" for r in runs)
        counts = {"done": len(finished), "running": running, "failed": len(failed),
                  "pending": max(0, total - len(finished) - running - len(failed))}
        export_counts("cells", self.job.name, counts)
        best = max(finished, key=_best_val, default=None)
        best_text = f"; best val precision {_best_val(best):.4f} ({best.info.run_name})" if best else ""
        log(f"cells: {counts['done']} done, {running} running, {counts['pending']} pending, "
            f"{len(failed)} failed{best_text}")


def _best_val(run) -> float:
    """A finished cell's selection metric, whatever its k (best_val_precision_at_K)."""
    return next((v for k, v in run.data.metrics.items() if k.startswith("best_val_precision_at_")), -1.0)


# ---- the report, from what MLflow recorded -----------------------------------------------------------------


def ablation_rows(grid: Grid, client, experiment_id: str, parent_id: str) -> tuple[list[dict], dict]:
    """One row per FINISHED cell of `grid`, read back from MLflow (so the report's numbers are MLflow's), and
    the test codes and labels of 128-bit cells for the projections."""
    records = finished_cells(client, experiment_id, parent_id)
    rows, codes = [], {}
    for cell in grid.cells:
        record = records.get(cell.id)
        if record is None:
            continue
        k = cell.train.eval_k
        metrics = record.metrics
        rows.append({"cell": cell.id, **cell.axes, "val_precision": metrics.get(f"best_val_precision_at_{k}"),
                     "test_precision": metrics.get(f"test_precision_at_{k}"),
                     "test_precision_ordered": metrics.get(f"test_precision_ordered_at_{k}"),
                     "best_epoch": int(metrics.get("best_epoch", 0)), "epochs_run": len(record.val_curve),
                     "fit_seconds": metrics.get("fit_seconds"), "epoch_seconds": metrics.get("mean_epoch_seconds"),
                     "val_curve": record.val_curve, "node": record.node[:12], "run_id": record.run_id})
        # The paper's Figure 2: 128-bit codes of VDSH, NASH and CorrSH on 20ng, one seed.
        if (cell.dataset.startswith("20ng") and cell.model.bits == 128 and cell.model.name in PROJECTED
                and cell.model.seed == min(c.model.seed for c in grid.cells)):
            packed = cell_codes(client, record.run_id)
            labels = TfidfShards(cell.data).split("test").labels
            codes[cell.id] = (unpack_codes(packed, 128), labels.argmax(axis=1))
    return rows, codes


def write_ablation_report(grid: Grid, client, experiment_id: str, parent_id: str, folder: Path,
                          command: str | None = None) -> Path:
    from corrhash.report.ablation import write_report

    rows, codes = ablation_rows(grid, client, experiment_id, parent_id)
    if not rows:
        raise CorrhashError(f"ablation {grid.name}: no finished cell to report")
    write_report(rows, folder, name=grid.name, axis_names=grid.axis_names, description=grid.description,
                 command=command or " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
                 codes=codes or None)
    return folder


def report_only(grid: Grid, options: AblateOptions, command: str | None = None) -> Path:
    """The report of an ablation's finished cells, without running any."""
    check_local_folder(options.out, "--out")
    uri = tracking_uri(options.cluster.mlflow_uri)
    client = client_for(uri)
    found = find_job_run(client, options.cluster.experiment, grid.name)
    if found is None:
        raise ConfigError(f"--report-only: no ablation named {grid.name!r} in experiment {options.cluster.experiment!r} at {uri}")
    return write_ablation_report(grid, client, *found, options.out / grid.name, command)
