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
                           timeout=300)
    assert shown.returncode == 0 and "usage:" in shown.stdout and "--quiet" in shown.stdout, shown.stderr
    script = shutil.which(f"corrhash-{name.replace('_', '-')}", path=str(Path(sys.executable).parent))
    assert script, f"corrhash-{name.replace('_', '-')} is not installed: pip install -e . (pyproject.toml)"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=300)
    assert version.returncode == 0 and version.stdout.startswith("corrhash "), version.stderr


def test_one_corrhash_command_runs_every_job():
    """`corrhash COMMAND` (and `python -m corrhash COMMAND`) is each job (ecosystem review t4, N7)."""
    script = shutil.which("corrhash", path=str(Path(sys.executable).parent))
    assert script, "corrhash is not installed: pip install -e . (pyproject.toml)"
    listed = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0
    block = listed.stdout.split("commands:\n")[1].split("\n\n")[0]
    assert sorted(line.split()[0].replace("-", "_") for line in block.splitlines()) == sorted(JOBS), block
    page = subprocess.run([sys.executable, "-m", "corrhash", "train", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert page.returncode == 0 and page.stdout.startswith("usage: corrhash train") and "--epochs" in page.stdout
    unknown = subprocess.run([script, "trian"], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr and "train" in unknown.stderr
