"""The layering in pyproject.toml ([tool.importlinter]) holds: `lint-imports` keeps every contract.

jobs > orchestration (runs) > tracking > serve | training library (train) > artifact > data | models |
retrieval > basics; no ray or mlflow below the orchestration layer, no ray in tracking, and no MLflow in
the worker code (runs/worker, session, spec). The benchmarks (bench/, at the repository root) sit on top of
the package, outside it: nothing in it imports them.
"""

from __future__ import annotations

import ast
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
    assert "0 broken" in done.stdout and "7 kept" in done.stdout, done.stdout


def test_the_package_never_imports_the_benchmarks():
    """bench/ is not installed (it stays out of models and Ray jobs' runtime environments), so no module of the
    package may import it, even lazily inside a function (import-linter sees only `corrhash`)."""
    offenders = []
    for path in sorted((REPO / "platform" / "corrhash").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.relative_to(REPO)}:{node.lineno}: {name}" for name in names
                          if name == "bench" or name.startswith(("bench.", "corrhash.bench"))]
    assert not offenders, "the package imports the benchmarks:\n" + "\n".join(offenders)
    assert not list((REPO / "platform" / "corrhash").glob("bench/*.py")), "the benchmarks moved to bench/"
