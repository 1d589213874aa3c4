"""What serving pays to import: `corrhash.serve.hashing` (every Serve replica, every `corrhash.load`) loads the
model, its featurizer and the device CSR, not the preparation pipeline, its readers, scikit-learn, Ray, MLflow
or tyro."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running `statement`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "platform"),
                                                                     os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", f"{statement}; import json, sys; print(json.dumps(sorted(sys.modules)))"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_serving_does_not_import_preparation_sklearn_ray_or_mlflow():
    loaded = modules_after("import corrhash.serve.hashing")
    assert "corrhash.serve.hashing" in loaded and "corrhash.data.featurize" in loaded
    heavy = {"corrhash.data.prepare", "corrhash.data.readers", "corrhash.data.sources", "sklearn", "ray", "mlflow",
             "tyro"}
    assert not heavy & loaded, sorted(heavy & loaded)
    assert not {m for m in loaded if m.startswith(("sklearn.", "ray.", "mlflow.", "tyro.", "corrhash.data.readers"))}


def test_the_reader_does_not_import_the_raw_corpus_readers():
    loaded = modules_after("from corrhash.data import TfidfShards")
    assert "corrhash.data.shards" in loaded
    assert not {"corrhash.data.prepare", "corrhash.data.readers", "corrhash.data.device_csr", "torch", "sklearn"} & loaded
