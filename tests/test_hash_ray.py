"""Hashing a corpus on Ray Data (`jobs/search.py --corpus SHARDS --ray`, runs/hash_corpus.py): an actor pool
holding the model writes the codes as Parquet shards, and the index built from them is one process's, bit for
bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from corrhash.artifact import save_model
from corrhash.data import TfidfShards
from corrhash.models import ModelConfig
from corrhash.retrieval.index import HammingIndex
from corrhash.train import TrainConfig, fit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(shards_synthetic, tmp_path_factory) -> Path:
    shards = TfidfShards(shards_synthetic)
    result = fit(ModelConfig(name="nash", bits=24, hidden=16), TrainConfig(epochs=1, batch_size=40, eval_k=10),
                 shards.split("train"), val=shards.split("val"))
    return save_model(tmp_path_factory.mktemp("hash") / "model", result.model,
                      json.loads((Path(shards_synthetic) / "vocab.json").read_text()),
                      {"label_names": shards.label_names})


def search(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/search.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.cluster
def test_ray_data_hashing_gives_one_process_codes(cluster, shards_synthetic, model_dir, tmp_path):
    here = search("--model", str(model_dir), "--corpus", str(shards_synthetic), "--index-out", str(tmp_path / "1.npz"),
                  "--index-kind", "flat")
    assert here.returncode == 0, here.stderr[-2000:]
    on_ray = search("--model", str(model_dir), "--corpus", str(shards_synthetic), "--index-out",
                    str(tmp_path / "ray.npz"), "--index-kind", "flat", "--ray", "--hash-actors", "2",
                    "--codes-out", str(tmp_path / "codes"), "--address", cluster["head"].gcs,
                    env=cluster["head"].client_env())
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert "on Ray Data" in on_ray.stderr and "2 actors" in on_ray.stderr
    one, ray = HammingIndex.load(tmp_path / "1.npz"), HammingIndex.load(tmp_path / "ray.npz")
    np.testing.assert_array_equal(ray.codes, one.codes)
    np.testing.assert_array_equal(ray.ids, one.ids)
    assert ray.meta["model"] == one.meta["model"]
    shards = TfidfShards(shards_synthetic)
    table = pq.read_table(tmp_path / "codes" / "codes")
    assert sorted(table.column("doc_id").to_pylist()) == sorted(shards.doc_ids("train").tolist())
    meta = json.loads((tmp_path / "codes" / "codes.json").read_text())
    assert meta["bits"] == 24 and meta["content_hash"] == shards.content_hash
    assert meta["model"]["weights_sha256"] == one.meta["model"]["weights_sha256"]


def test_ray_hashing_options_are_checked(shards_synthetic, model_dir, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"text": "a b"}\n')
    not_shards = search("--model", str(model_dir), "--corpus", str(corpus), "--ray")
    assert not_shards.returncode == 2 and "--ray hashes a prepared shard folder" in not_shards.stderr
    alone = search("--model", str(model_dir), "--corpus", str(shards_synthetic), "--codes-out", str(tmp_path / "c"))
    assert alone.returncode == 2 and "apply with --ray only" in alone.stderr
    zero = search("--model", str(model_dir), "--corpus", str(shards_synthetic), "--ray", "--hash-actors", "0")
    assert zero.returncode == 2 and "--hash-actors 0" in zero.stderr
