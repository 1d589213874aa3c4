"""The document graph's search spread over a Ray cluster (`jobs/graph.py --ray`, launch/blocks.py) gives the lists
one process gives, and the cache it writes is what training then reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corrhash.data import TfidfShards
from corrhash.models.graph import pruned_neighbours
from corrhash.train.neighbours import LIST_WIDTH, graph_path

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.cluster
def test_graph_job_on_ray_gives_one_process_lists_and_caches_them(cluster, shards_synthetic, tmp_path):
    data = Path(shutil.copytree(shards_synthetic, tmp_path / "shards", ignore=shutil.ignore_patterns("graphs")))
    done = subprocess.run([sys.executable, "jobs/graph.py", "--data", str(data), "--search", "pruned", "--ray",
                           "--address", cluster["head"].gcs], cwd=REPO, env=cluster["head"].client_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 blocks searched on Ray" in done.stderr and "on 1 node(s)" in done.stderr  # 480 rows: 2 blocks of 256
    shards = TfidfShards(data)
    path = graph_path(shards, LIST_WIDTH, "pruned")
    assert f"searched {path}" in done.stdout and "recall@25" in done.stdout
    ids, sims, _ = pruned_neighbours(shards.split("train").features, LIST_WIDTH)
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["ids"], ids)
        np.testing.assert_allclose(saved["sims"], sims, rtol=1e-6)
    again = subprocess.run([sys.executable, "jobs/graph.py", "--data", str(data), "--search", "pruned"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"reused {path}" in again.stdout


def test_graph_job_options_are_checked(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "jobs/graph.py", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert "--address applies with --ray only" in run("--data", str(tmp_path), "--address", "x:1").stderr
    assert "--neighbours 0: must be >= 1" in run("--data", str(tmp_path), "--neighbours", "0").stderr
    missing = run("--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    bad = run("--data", str(tmp_path), "--search", "faiss")
    assert bad.returncode == 2 and "auto" in bad.stderr and "pruned" in bad.stderr
