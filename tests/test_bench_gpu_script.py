"""bench/gpu.sh runs with only the GPU machine's packages (no faiss, ray, mlflow, optuna).

The script is run as the device machine runs it (its own python, PYTHONPATH=platform, shards read
from a folder, results written to $OUT), but with --device cpu, tiny shards and tiny sizes. Speed is
never asserted: only that every section is reported with finite numbers.

The GPU machine's environment is a virtual environment without pip whose site-packages links those packages
and what they require from this test environment (the same files, so the same versions, in milliseconds: a
pip install of torch, pandas and scipy took 186 s of CI's run). It is rebuilt when the package list changes.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a virtual environment once per checkout

REPO = Path(__file__).resolve().parents[1]
GPU_MACHINE_PACKAGES = ["torch", "numpy", "scipy", "pyarrow", "scikit-learn", "safetensors", "pyyaml", "pandas"]
ABSENT_THERE = ["faiss", "ray", "mlflow", "optuna"]
VENV = REPO / "build" / "gpu-machine-venv"


def _distributions(names: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions `names` need, by name: each one and, transitively, what it requires (extras
    left out, as a plain `pip install name` would)."""
    from packaging.requirements import Requirement

    found, todo = {}, list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist = importlib.metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


@pytest.fixture(scope="session")
def gpu_machine_python() -> Path:
    distributions = _distributions(GPU_MACHINE_PACKAGES)
    listing = sorted(f"{name}=={dist.version}" for name, dist in distributions.items())
    stamp, python = VENV / "requirements.txt", VENV / "bin" / "python"
    if not (stamp.is_file() and stamp.read_text().split() == listing and python.exists()):
        shutil.rmtree(VENV, ignore_errors=True)
        # This test environment's base interpreter (the same Python, for the compiled extensions), without
        # pip: nothing is installed there, as on the GPU machine.
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        for dist in distributions.values():
            for file in dist.files or []:
                top = file.parts[0]
                if top != ".." and not (site / top).exists():  # ".." are scripts in bin/
                    (site / top).symlink_to(Path(dist.locate_file(top)).resolve())
        stamp.write_text("\n".join(listing) + "\n")
    return python


def _numbers(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def test_gpu_script_runs_with_the_gpu_machines_packages_only(gpu_machine_python, shards_20ng_small, tmp_path):
    absent = subprocess.run([str(gpu_machine_python), "-c", "import importlib.util as u; "
                             f"print([m for m in {ABSENT_THERE!r} if u.find_spec(m)])"],
                            capture_output=True, text=True, check=True)
    assert absent.stdout.strip() == "[]", "the test environment must lack what the GPU machine lacks"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PY=str(gpu_machine_python), DATA=str(shards_20ng_small), DEVICE="cpu", OUT=str(tmp_path),
               OMP_NUM_THREADS="1", GRAPH_DOCS="1500 3000", GRAPH_FULL_MAX="2000", GRAPH_QUERIES="200")
    tiny = ["--batch-sizes", "100", "500", "--epochs", "1", "--synthetic-shape", "400", "100", "3000", "30",
            "--profile-steps", "3", "--compile-modes", "eager", "--compile-warmup-steps", "2",
            "--processes", "1", "2", "--packing-epochs", "1",
            "--db-sizes", "3000", "6000", "--search-bits", "64", "128", "--queries", "40",
            "--reference-queries", "8", "--reference-db", "1000"]
    run = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), *tiny], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    report = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert report["errors"] == {} and report["skipped"] == []
    assert {row["dataset"] for row in report["epochs"]} == {"20ng", "tmc-shaped synthetic"}
    assert [row["batch_size"] for row in report["epochs"]] == [100, 500, 100, 500]
    assert report["step_profile"]["steps"] == 3 and "aten::" in report["step_profile"]["table"]
    assert [row["mode"] for row in report["compile"]] == ["off", "eager"]
    assert all("error" not in row for row in report["compile"]), report["compile"]
    assert [row["processes"] for row in report["packing"]] == [1, 2]
    assert [(row["bits"], row["database"]) for row in report["search"]] == [(64, 3000), (64, 6000),
                                                                           (128, 3000), (128, 6000)]
    assert set(report["section_seconds"]) == {"epochs", "step", "packing", "search", "compile"}
    graph = json.loads((tmp_path / "graph-gpu.json").read_text())  # the graph section: torch product vs scipy
    assert [(row["docs"], row["method"], row["scaled"]) for row in graph] == [
        (1500, "exact-torch", False), (1500, "exact", False), (3000, "exact-torch", False), (3000, "exact", True)]
    assert all(row["recall"] > 0.999 for row in graph) and "| exact-torch |" in (tmp_path / "graph-gpu.md").read_text()
    numbers = list(_numbers(report))
    assert numbers and all(math.isfinite(x) for x in numbers)
    for row in report["epochs"]:
        assert row["epoch_speedup"] > 0 and 0 <= row["ours_val_precision"] <= 1
        assert 0 <= row["reference_val_precision"] <= 1

    table = (tmp_path / "bench-cpu.md").read_text()
    for heading in ("## 1. Training epoch", "## 2. One training step", "## 3. Concurrent trainings",
                    "## 4. Hamming top-100"):
        assert heading in table
    assert not re.search(r"\b(nan|inf)\b", table, re.IGNORECASE)
