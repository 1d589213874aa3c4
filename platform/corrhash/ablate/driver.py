"""Cluster-wide ablations: every cell of a grid (ablate/grid.py) is one Ray task, packed onto the cluster's nodes by
the CPUs and (fractional) GPUs the grid asks per cell, and recorded as one MLflow child run of the ablation's
parent run.

Why tasks and not Tune's grid: a cell is a whole plain-process run (the one epoch loop, `finish`'s test scoring
and model folder), with no search, scheduler or per-trial checkpoint to manage; a task is the smallest unit Ray
packs by resources and retries when its node dies (`max_retries`), which is all a grid needs.

Exactly once: the cell's MLflow run is the record. A task first looks for a FINISHED run of its cell under the
parent and returns it if there is one (a rerun of the same --name, or a retry after the cell already finished);
runs a killed attempt left RUNNING or FAILED are deleted before the cell starts again, so each cell ends with
exactly one run, FINISHED. The driver submits only cells without a FINISHED run, so rerunning a completed
ablation starts no cell.
"""

from __future__ import annotations

import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from corrhash.data import TfidfShards
from corrhash.device import resolve_device
from corrhash.errors import ConfigError, CorrhashError
from corrhash.log import log
from corrhash.launch.connect import check_fits, init_ray, user_error
from corrhash.ablate.grid import Cell, Grid
from corrhash.runs.local import run_local
from corrhash.launch.live import EpochExporter, export_counts
from corrhash.launch.shared_paths import check_shared_paths
from corrhash.serve.hashing import HashingModel
from corrhash.tracking.lineage import source_tags
from corrhash.tracking.runs import (ABLATION_TAG, CELL_TAG, JOB_TAG, client_for, ensure_experiment, filter_value,
                                    final_metrics, job_run, log_metrics, log_params, tracking_uri)
from corrhash.launch.preflight import check_job_name, check_job_paths, check_local_folder, job_lock

NODE_TAG = "corrhash.node"
PROGRESS_EVERY_S = 15.0
PROJECTED = ("vdsh", "nash", "corrsh")


@dataclass
class AblateOptions:
    address: str | None = None
    """Ray cluster to use; default $RAY_ADDRESS (set inside `ray job submit`), else a local Ray."""
    mlflow_uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db."""
    experiment: str = "corrhash-ablations"
    """MLflow experiment of the ablation's parent run and its cells' child runs."""
    max_retries: int = 3
    """Times Ray reruns a cell whose worker or node died (a cell that raises is not retried)."""
    out: Path = Path("runs/ablations")
    """Folder under which the ablation's report folder (named after it) is written."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries {self.max_retries}: must be >= 0")


# ---- one cell (runs inside a Ray task) --------------------------------------------------------------------


def cell_runs(client, experiment_id: str, parent_id: str, cell_id: str | None = None) -> list:
    query = f"tags.`mlflow.parentRunId` = {filter_value(parent_id)}"
    if cell_id is not None:
        query += f" and tags.`{CELL_TAG}` = {filter_value(cell_id)}"
    return client.search_runs([experiment_id], filter_string=query, max_results=10_000)


def run_cell(cell_dict: dict, uri: str, experiment_id: str, parent_id: str, ablation: str,
             source: dict[str, str]) -> str:
    """Run one cell unless it already has a FINISHED run; returns that run's id. `source`: the driver's
    lineage tags (a task on another node has no checkout to read them from)."""
    import ray

    cell = Cell.from_dict(cell_dict)
    client = client_for(uri)
    previous = cell_runs(client, experiment_id, parent_id, cell.id)
    finished = [run for run in previous if run.info.status == "FINISHED"]
    if finished:
        return finished[0].info.run_id
    for run in previous:  # a killed or failed attempt: its partial record goes, so the cell is recorded once
        client.delete_run(run.info.run_id)
    node = ray.get_runtime_context().get_node_id()
    tags = {**source, "mlflow.parentRunId": parent_id, CELL_TAG: cell.id, ABLATION_TAG: ablation, NODE_TAG: node,
            "host": platform.node(), **{f"axis.{k}": str(v) for k, v in cell.axes.items()}}
    run_id = client.create_run(experiment_id, run_name=cell.label(), tags=tags).info.run_id
    try:
        spec = cell.spec()
        log_params(client, run_id, {"model": spec.model.to_dict(), "train": spec.train.to_dict(), "data": spec.data,
                                    "cell": cell.id, "resources": {"cpus": cell.cpus, "gpus": cell.gpus}})
        if resolve_device(spec.train.device).type == "cpu":
            torch.set_num_threads(spec.threads)
        with tempfile.TemporaryDirectory(prefix="corrhash-cell-") as tmp:
            out = Path(tmp) / "run"
            # The plain-process launcher (input checks, the one loop, finish), its epochs also sent to MLflow.
            export = EpochExporter(ablation, cell.id, 0, spec.model.name)

            def on_epoch(metrics: dict) -> None:
                log_metrics(client, run_id, metrics, step=metrics["epoch"])
                export(metrics)

            results = run_local(spec, out, on_epoch=on_epoch, launcher="ablate", job=ablation, run_id=run_id)
            test = TfidfShards(spec.data).split("test")
            codes = HashingModel(out / "model", spec.train.device).encode_features(test.features)
            np.save(out / "test_codes.npy", codes, allow_pickle=False)  # packed; for the code projections
            for name in ("results.json", "metrics.jsonl", "test_codes.npy"):
                client.log_artifact(run_id, str(out / name))
        seconds = [s for s in results["epoch_seconds"] if s is not None]
        log_metrics(client, run_id, {**final_metrics(results), "fit_seconds": results["fit_seconds"],
                                     **({"mean_epoch_seconds": float(np.mean(seconds))} if seconds else {})}, step=0)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


# ---- the driver ---------------------------------------------------------------------------------------------


def run_ablation(grid: Grid, options: AblateOptions, command: str | None = None) -> Path:
    """Run the cells of `grid` without a FINISHED run, then write the report; returns the report folder."""
    name = check_job_name(grid.name)
    check_job_paths(options.mlflow_uri, str(options.out), option="--out")
    with job_lock(str(options.out.absolute() / ".locks"), name):  # one live ablation per name
        return _run(grid, options, name, command)


def _run(grid: Grid, options: AblateOptions, name: str, command: str | None) -> Path:
    import ray

    init_ray(options.address)
    check_shared_paths(data={f"{grid.source}: data.{cell.dataset}": cell.data for cell in grid.cells})
    for cell in grid.cells:
        check_fits(f"cell {cell.label()} (cpus {cell.cpus:g}, gpus {cell.gpus:g})", cell.cpus, cell.gpus)
    uri = tracking_uri(options.mlflow_uri)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, options.experiment)
    params = {"grid": str(grid.source), "cells": len(grid.cells), "axes": ",".join(grid.axis_names)}
    with job_run(client, experiment_id, name, params, {ABLATION_TAG: name}) as (parent_id, resumed):
        client.log_artifact(parent_id, str(grid.source), "grid")
        done = {run.data.tags[CELL_TAG] for run in cell_runs(client, experiment_id, parent_id)
                if run.info.status == "FINISHED"}
        todo = [cell for cell in grid.cells if cell.id not in done]
        log(f"ablation {name}: MLflow run {parent_id} at {uri}{' (resumed)' if resumed else ''}; "
            f"{len(grid.cells)} cells, {len(done & {c.id for c in grid.cells})} already finished, {len(todo)} to run")
        remote, source = ray.remote(run_cell), source_tags()
        pending = {remote.options(num_cpus=cell.cpus, num_gpus=cell.gpus, max_retries=options.max_retries,
                                  retry_exceptions=False, name=f"cell {cell.label()}")
                   .remote(cell.to_dict(), uri, experiment_id, parent_id, name, source): cell for cell in todo}
        failed = _wait(pending, client, experiment_id, parent_id, len(grid.cells), name)
        folder = write_ablation_report(grid, client, experiment_id, parent_id, options.out / name, command)
        for path in sorted(folder.iterdir()):
            client.log_artifact(parent_id, str(path), "report")
        if failed:
            raise failed[0][1] if len(failed) == 1 else CorrhashError(
                f"ablation {name}: {len(failed)} cells failed: " + "; ".join(f"{c.label()}: {e}" for c, e in failed))
    log(f"ablation {name}: report {folder / 'report.md'}")
    return folder


def _wait(pending: dict, client, experiment_id: str, parent_id: str, total: int, name: str) -> list:
    """Wait for every task, printing (and exporting as `corrhash_ablation_cells`) cells done / running / pending
    and the best so far; returns the failures."""
    import ray

    failed, last = [], 0.0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY_S)
        for ref in ready:
            cell = pending.pop(ref)
            try:
                ray.get(ref)
            except Exception as exc:  # a cell's own error (bad data, a diverging loss): the others go on
                cause = user_error(exc)
                if cause is None and not isinstance(exc, ray.exceptions.RayError):
                    raise
                failed.append((cell, cause or exc))
                log(f"cell {cell.label()} failed: {cause or exc}")
        if time.monotonic() - last >= PROGRESS_EVERY_S or not pending:
            last = time.monotonic()
            runs = cell_runs(client, experiment_id, parent_id)
            finished = [r for r in runs if r.info.status == "FINISHED"]
            running = sum(r.info.status == "RUNNING" for r in runs)
            counts = {"done": len(finished), "running": running, "failed": len(failed),
                      "pending": max(0, total - len(finished) - running - len(failed))}
            export_counts("cells", name, counts)
            best = max(finished, key=_best_val, default=None)
            best_text = f"; best val precision {_best_val(best):.4f} ({best.info.run_name})" if best else ""
            log(f"cells: {counts['done']} done, {running} running, {counts['pending']} pending, "
                f"{len(failed)} failed{best_text}")
    return failed


def _best_val(run) -> float:
    """A finished cell's selection metric, whatever its k (best_val_precision_at_K)."""
    return next((v for k, v in run.data.metrics.items() if k.startswith("best_val_precision_at_")), -1.0)


# ---- the report, from what MLflow recorded -----------------------------------------------------------------


def ablation_rows(grid: Grid, client, experiment_id: str, parent_id: str) -> tuple[list[dict], dict]:
    """One row per FINISHED cell of `grid`, read back from MLflow (so the report's numbers are MLflow's), and
    the test codes and labels of 128-bit cells for the projections."""
    from mlflow.artifacts import download_artifacts

    runs = {r.data.tags[CELL_TAG]: r for r in cell_runs(client, experiment_id, parent_id)
            if r.info.status == "FINISHED"}
    rows, codes = [], {}
    for cell in grid.cells:
        run = runs.get(cell.id)
        if run is None:
            continue
        k = cell.train.eval_k
        metrics = run.data.metrics
        curve = sorted(client.get_metric_history(run.info.run_id, "val_precision"), key=lambda m: m.step)
        rows.append({"cell": cell.id, **cell.axes, "val_precision": metrics.get(f"best_val_precision_at_{k}"),
                     "test_precision": metrics.get(f"test_precision_at_{k}"),
                     "test_precision_ordered": metrics.get(f"test_precision_ordered_at_{k}"),
                     "best_epoch": int(metrics.get("best_epoch", 0)), "epochs_run": len(curve),
                     "fit_seconds": metrics.get("fit_seconds"), "epoch_seconds": metrics.get("mean_epoch_seconds"),
                     "val_curve": [m.value for m in curve], "node": run.data.tags.get(NODE_TAG, "")[:12],
                     "run_id": run.info.run_id})
        # The paper's Figure 2: 128-bit codes of VDSH, NASH and CorrSH on 20ng, one seed.
        if (cell.dataset.startswith("20ng") and cell.model.bits == 128 and cell.model.name in PROJECTED
                and cell.model.seed == min(c.model.seed for c in grid.cells)):
            with tempfile.TemporaryDirectory() as tmp:
                path = download_artifacts(run_id=run.info.run_id, artifact_path="test_codes.npy", dst_path=tmp,
                                          tracking_uri=client.tracking_uri)
                packed = np.load(path, allow_pickle=False)
            labels = TfidfShards(cell.data).split("test").labels
            codes[cell.id] = (np.unpackbits(packed, axis=1)[:, :128].astype(bool), labels.argmax(axis=1))
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
    uri = tracking_uri(options.mlflow_uri)
    client = client_for(uri)
    experiment = client.get_experiment_by_name(options.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{JOB_TAG}` = {filter_value(grid.name)}",
                              max_results=1) if experiment else []
    if not runs:
        raise ConfigError(f"--report-only: no ablation named {grid.name!r} in experiment {options.experiment!r} at {uri}")
    return write_ablation_report(grid, client, experiment.experiment_id, runs[0].info.run_id,
                                 options.out / grid.name, command)
