"""The layering in pyproject.toml ([tool.importlinter]) holds: `lint-imports` keeps every contract.

jobs > orchestration (runs) > tracking > serve | training library (train) > artifact > data | models |
retrieval > basics; no ray or mlflow below the orchestration layer, no ray in tracking, and no MLflow in
the worker code (runs/worker, session, spec).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="pip install -e '.[test]' brings import-linter")
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(REPO / "platform"))
    done = subprocess.run([command, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "5 kept" in done.stdout, done.stdout
