"""Run an ablation grid across a Ray cluster, record every cell in MLflow, and report it like the paper's tables.

Examples:
  python jobs/ablate.py --grid jobs/grids/table5-reuters.yaml --dry-run     # the cells and what they need
  python jobs/ablate.py --grid jobs/grids/table5-reuters.yaml               # local Ray, ./mlflow.db
  ray job submit ... -- python jobs/ablate.py --grid jobs/grids/paper-tables.yaml   # any Ray cluster (README)
  python jobs/ablate.py --grid jobs/grids/table5-reuters.yaml --report-only # rewrite the report from MLflow

A grid (YAML; see jobs/grids/) names prepared data folders, methods, bit lengths, seeds and extra axes; each
cell is one plain-process run (the one epoch loop, val-selected, test scored once) packed onto the cluster by
the CPUs/GPUs it asks for. One MLflow parent run per ablation (--name, default the grid's name), one child run
per cell tagged with every axis value and the node it ran on. Running the same name again runs only the cells
without a FINISHED run; a lost node's cells are rerun by Ray, each recorded exactly once. The report
(results.parquet, report.md, figures) goes to OUT/NAME/ and to the parent run's artifacts.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

import yaml  # noqa: E402

from corrhash.cli import CLI, JobParser, add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.errors import ConfigError, CorrhashError  # noqa: E402
from corrhash.ablate.driver import AblateOptions  # noqa: E402
from corrhash.ablate.grid import load_grid  # noqa: E402


@dataclass
class AblateJob:
    grid: Path
    """the grid file (YAML); see jobs/grids/"""
    name: str | None = None
    """ablation name (MLflow parent run, report folder); default: the grid's name. The same name resumes"""
    dry_run: bool = False
    """print the cells and the resources they need, then stop (nothing runs, nothing is recorded)"""
    report_only: bool = False
    """rewrite the report from the ablation's finished cells in MLflow; run nothing"""
    set: list[str] = field(default_factory=list, metadata={CLI: {"action": "append", "metavar": "FIELD=VALUE"}})
    """set a model or train field in every cell, over the grid's `fixed` (repeatable; e.g. --set epochs=50)"""


def parse_settings(items: list[str]) -> dict:
    """{field: value} of --set FIELD=VALUE options; values read as YAML scalars (50, 0.02, true)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set epochs=50")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def parse_args(argv: list[str] | None = None) -> tuple[AblateJob, AblateOptions]:
    parser = JobParser(__doc__)
    add_dataclass_args(parser, AblateJob, "grid")
    add_dataclass_args(parser, AblateOptions, "Ray and MLflow")
    args = parser.parse_args(argv)
    return dataclass_from_args(AblateJob, args), dataclass_from_args(AblateOptions, args)


def main(argv=None) -> int:
    job, options = parse_args(argv)
    # SIGTERM (ray job stop) ends like Ctrl-C: the parent run is marked KILLED and a rerun resumes it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        grid = load_grid(job.grid, name=job.name, fixed=parse_settings(job.set))
        print(grid.describe(), flush=True)
        if job.dry_run:
            return 0
        from corrhash.ablate.driver import report_only, run_ablation

        folder = report_only(grid, options) if job.report_only else run_ablation(grid, options)
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {folder / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
