"""Benchmarks, outside the installed package: our epoch loop and Hamming search against a reference of the
authors' mechanics (`python -m bench.run`), how each stage's cost grows with the corpus (`python -m bench.run
scale`), and the synthetic corpora they and the tests use (`bench/synthetic.py`, `python -m bench.synth`).

Run from the repository root (`python -m` puts it on the path; the tests get it from pytest's `pythonpath`).
They import `corrhash` (installed, or `PYTHONPATH=platform` as bench/gpu.sh sets); nothing in `corrhash`
imports them (tests/test_layers.py), so none of this ships in a model or a Ray job's runtime environment.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository root (jobs/ are run from here too)."""


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a `python -m bench.MODULE` child: the repository root and platform/ on
    PYTHONPATH, so the child finds `bench` and `corrhash` wherever its working directory is."""
    paths = [str(REPO), str(REPO / "platform"), os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)), **extra)
