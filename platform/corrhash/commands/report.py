"""Render an MLflow run as one self-contained HTML page (inline images, no network) and log it to the run.

Examples:
  python jobs/report.py --run 3f2a...e1                       # ./mlflow.db; writes report-RUN_ID.html
  python jobs/report.py --run ng64-tune --mlflow-uri http://127.0.0.1:5000 --out ng64-tune.html
  python jobs/report.py --run table5-reuters --no-log-artifact  # an ablation parent, by name

The page has the run's final metrics and params; learning curves (loss terms, KL weight, val precision per
epoch; a tune's best trial); for a tune parent each trial's best val precision against every searched
hyper-parameter, their importances (PED-ANOVA over an Optuna study rebuilt from the trials) and a trials table;
for an ablation parent its report (paper-shaped tables, paired comparisons, figures); and a 2-D map (UMAP,
Hamming metric, with the `corrhash[report]` extra; scikit-learn's t-SNE without it, named on the page) of the
model's test codes coloured by label, when the run's data folder is on this machine.
The page is logged to the run as the artifact report/report.html, so it opens from the MLflow UI.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from corrhash import commands
from corrhash.errors import ConfigError, CorrhashError
from corrhash.log import log


@dataclass
class ReportJob:
    run: str
    """the MLflow run to render: its id, or the name of a top-level run (a job, tune or ablation) if only one has it"""
    mlflow_uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db"""
    out: Path | None = None
    """where to write the page; default report-RUN_ID.html in the current folder"""
    log_artifact: bool = True
    """log the page to the run as the artifact report/report.html"""
    umap_sample: int = 2000
    """at most this many test documents (a seeded sample) in the 2-D map of the codes"""

    def __post_init__(self) -> None:
        if self.umap_sample < 2:
            raise ConfigError(f"--umap-sample {self.umap_sample}: must be >= 2")


def ablation_input(client, run):
    """An ablation parent's rows and per-cell codes, read back from MLflow by ablate.driver.ablation_rows (over
    tracking.run_report's readers) with the grid file the parent logged; the grid's data folders must be on this
    machine."""
    from corrhash.report.page import AblationInput
    from corrhash.ablate.driver import ablation_rows
    from corrhash.ablate.grid import load_grid
    from corrhash.tracking.run_report import ABLATION_TAG, grid_file

    name = run.data.tags[ABLATION_TAG]
    with tempfile.TemporaryDirectory(prefix="corrhash-report-") as tmp:
        grid = load_grid(grid_file(client, run, Path(tmp)), name=name)
    rows, codes = ablation_rows(grid, client, run.info.experiment_id, run.info.run_id)
    if not rows:
        raise CorrhashError(f"ablation {name} (run {run.info.run_id}): no finished cell of its grid to report")
    return AblationInput(name=name, rows=rows, axis_names=grid.axis_names, description=grid.description,
                         codes=codes or None)


def render(job: ReportJob, command: str) -> Path:
    """Read the run, write the page, log it; returns the page's path."""
    from corrhash.report.page import write_page
    from corrhash.tracking.run_report import find_run, log_page, page_input, require_store
    from corrhash.tracking.runs import client_for, tracking_uri

    uri = tracking_uri(job.mlflow_uri)
    require_store(uri)
    client = client_for(uri)
    run = find_run(client, job.run)
    run_id = run.info.run_id
    log(f"run {run_id} ({run.info.run_name}) at {uri}: reading metrics, params and child runs")
    page = page_input(client, run, command)
    log(f"a {page.kind} page: {len(page.curves)} curves, {len(page.trials)} trials"
        + ("" if page.codes is None else f", {len(page.codes.bits)} test codes"))
    if page.kind == "ablation":
        log("reading the ablation's cells")
        page.ablation = ablation_input(client, run)
    for note in page.notes:
        log(note)
    out = job.out or Path(f"report-{run_id}.html")
    log(f"drawing the page (a 2-D map of at most {job.umap_sample} codes)")
    write_page(page, out, codes_sample=job.umap_sample)
    log(f"wrote {out}")
    if job.log_artifact:
        artifact = log_page(client, run_id, out)
        log(f"logged to run {run_id} as {artifact}")
    return out


def parse_args(argv=None) -> ReportJob:
    return commands.parse(ReportJob, __doc__, argv, title="report")


def main(argv=None) -> int:
    # The command line as typed (a call of main(argv) from Python is shown as the equivalent command).
    command = shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else ["jobs/report.py", *argv])])

    def job() -> None:
        out = render(parse_args(argv), command)
        print(f"report: {out}")

    return commands.run(job)
