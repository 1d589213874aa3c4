"""Shared fixtures: a synthetic shard set (no raw corpus needed), the team's raw corpora (from $CORRHASH_RAW_DIR)
and shards prepared once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from corrhash.data import TfidfRecipe
from corrhash.data.prepare import PrepareConfig, prepare
from services import start_mlflow_server, start_ray_head, stop

REPO = Path(__file__).resolve().parents[1]


SYNTHETIC_TOPICS = 8
SYNTHETIC_SPLITS = {"train": 320, "val": 80, "test": 80}


def write_synthetic_corpus(path: Path, seed: int = 0) -> Path:
    """A JSONL text corpus with topic structure: each of 8 topics has 30 words of its own, 60 words are shared
    by all; a document draws 30-60 words from one or two topics (its labels) and the shared words, so codes
    that learn the topics retrieve by label. Splits as in SYNTHETIC_SPLITS."""
    rng = np.random.default_rng(seed)
    topic_words = [[f"t{t}w{j}" for j in range(30)] for t in range(SYNTHETIC_TOPICS)]
    shared = [f"common{j}" for j in range(60)]
    with open(path, "w") as handle:
        for split, count in SYNTHETIC_SPLITS.items():
            for _ in range(count):
                topics = sorted(rng.choice(SYNTHETIC_TOPICS, size=rng.integers(1, 3), replace=False).tolist())
                own = [w for t in topics for w in topic_words[t]]
                n = int(rng.integers(30, 61))
                words = [own[i] for i in rng.integers(0, len(own), size=n * 2 // 3)]
                words += [shared[i] for i in rng.integers(0, len(shared), size=n - len(words))]
                handle.write(json.dumps({"text": " ".join(rng.permutation(words)), "split": split,
                                         "labels": [f"topic{t}" for t in topics]}) + "\n")
    return path


@pytest.fixture(scope="session")
def shards_synthetic(tmp_path_factory) -> Path:
    """480 synthetic documents (320/80/80) prepared by the package's own prepare(), 4 train shard files (so two
    Ray workers get a share each): model and loop tests that must run on any clone, without raw corpora."""
    folder = tmp_path_factory.mktemp("synthetic")
    out = folder / "shards"
    prepare(PrepareConfig(dataset="text", raw=write_synthetic_corpus(folder / "corpus.jsonl"), out=out,
                          recipe=TfidfRecipe(min_df=2, max_df=1.0), rows_per_shard=80))
    return out


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    base = os.environ.get("CORRHASH_RAW_DIR")
    if not base or not Path(base).is_dir():
        pytest.skip("set CORRHASH_RAW_DIR to the folder of raw corpora (.ci/run passes ../shared/data)")
    return Path(base)


@pytest.fixture(scope="session")
def shards_20ng(raw_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "20ng"
    prepare(PrepareConfig(dataset="20ng", raw=raw_dir / "20news-bydate" / "20news-bydate.tar.xz", out=out))
    return out


@pytest.fixture(scope="session")
def shards_reuters(raw_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "reuters"
    prepare(PrepareConfig(dataset="reuters", raw=raw_dir / "reuters21578" / "reuters21578.tar.xz", out=out))
    return out


@pytest.fixture(scope="session")
def shards_20ng_small(raw_dir: Path, tmp_path_factory) -> Path:
    """Real 20ng, full vocabulary, a seeded sample of 1500 documents per split: for training tests."""
    out = tmp_path_factory.mktemp("shards") / "20ng-small"
    prepare(PrepareConfig(dataset="20ng", raw=raw_dir / "20news-bydate" / "20news-bydate.tar.xz", out=out,
                          limit=1500, rows_per_shard=500))  # 3 train shard files: 2 workers get a share each
    return out


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster")
    mlflow_process, mlflow_uri = start_mlflow_server(workdir)
    try:
        head = start_ray_head(workdir)
    except BaseException:
        stop(mlflow_process)
        raise
    yield {"head": head, "mlflow": mlflow_uri, "workdir": workdir}
    stop(head.process, timeout=60)
    stop(mlflow_process)
