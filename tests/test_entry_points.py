"""Every job's entry points answer: `python jobs/NAME.py --help` (the script `ray job submit` runs) and the console
script `corrhash-NAME --version` (pyproject.toml [project.scripts]), both running corrhash.commands.NAME's main."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = ["train", "tune", "ablate", "prepare_data", "graph", "search", "serve", "report", "quality_table"]


@pytest.mark.parametrize("name", JOBS)
def test_job_script_and_console_script(name):
    shown = subprocess.run([sys.executable, f"jobs/{name}.py", "--help"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and "usage:" in shown.stdout and "--quiet" in shown.stdout, shown.stderr
    script = shutil.which(f"corrhash-{name.replace('_', '-')}", path=str(Path(sys.executable).parent))
    assert script, f"corrhash-{name.replace('_', '-')} is not installed: pip install -e . (pyproject.toml)"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("corrhash "), version.stderr
