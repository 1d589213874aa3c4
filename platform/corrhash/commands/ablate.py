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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
import yaml

from corrhash import commands
from corrhash.ablate.driver import AblateOptions
from corrhash.ablate.grid import load_grid
from corrhash.errors import ConfigError


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
    set: Annotated[list[str], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="FIELD=VALUE")] = field(
        default_factory=list)
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


@dataclass
class AblateCommand:
    job: AblateJob
    """grid"""
    options: AblateOptions = field(default_factory=AblateOptions)
    """Ray and MLflow"""


def parse_args(argv: list[str] | None = None) -> tuple[AblateJob, AblateOptions]:
    command = commands.parse(AblateCommand, __doc__, argv, title="ablate")
    return command.job, command.options


def main(argv=None) -> int:
    def job() -> None:
        ablation, options = parse_args(argv)
        grid = load_grid(ablation.grid, name=ablation.name, fixed=parse_settings(ablation.set))
        print(grid.describe(), flush=True)
        if ablation.dry_run:
            return
        from corrhash.ablate.driver import report_only, run_ablation

        folder = report_only(grid, options) if ablation.report_only else run_ablation(grid, options)
        print(f"report: {folder / 'report.md'}")

    return commands.run(job)
