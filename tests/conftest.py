"""Shared fixtures: a synthetic shard set (no raw corpus needed), the team's raw corpora (from $CORRHASH_RAW_DIR)
and shards prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

from bench.synthetic import TOPIC_CORPUS_SPLITS, TOPIC_CORPUS_TOPICS, write_topic_corpus
from corrhash.data import TfidfRecipe
from corrhash.data.prepare import PrepareConfig, prepare
from services import start_mlflow_server, start_ray_head, stop

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Under `pytest -n 2 --dist loadgroup` (make test) every test that starts a Ray head or an MLflow server runs
    on one worker, one after another, against the one session-shared head: two heads on two cores would each
    claim both CPUs, and the tests' deadlines assume they have them. The other worker takes everything else."""
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.xdist_group("services"))


# The synthetic corpus is the benchmarks' own generator's (bench/synthetic.py), under the names the tests use.
SYNTHETIC_TOPICS = TOPIC_CORPUS_TOPICS
SYNTHETIC_SPLITS = TOPIC_CORPUS_SPLITS
write_synthetic_corpus = write_topic_corpus


@pytest.fixture(scope="session")
def shards_synthetic(tmp_path_factory) -> Path:
    """480 synthetic documents (320/80/80) prepared by the package's own prepare(), 4 train shard files (so two
    Ray workers get a share each): model and loop tests that must run on any clone, without raw corpora."""
    folder = tmp_path_factory.mktemp("synthetic")
    out = folder / "shards"
    prepare(PrepareConfig(dataset="text", raw=write_synthetic_corpus(folder / "corpus.jsonl"), out=out,
                          recipe=TfidfRecipe(min_df=2, max_df=1.0), rows_per_shard=80))
    return out


def prepared_once(tmp_path_factory, name: str, config) -> Path:
    """Shards prepared once for the whole run, also when pytest-xdist runs it in several workers (each has its own
    session): the first worker to get here prepares, the others wait for it and reuse the folder."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: the workers' common parent
    out = root / "prepared" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock"):
        if not (out / "manifest.json").is_file():  # prepare() renames a complete folder into place
            prepare(config(out))
    return out


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    base = os.environ.get("CORRHASH_RAW_DIR")
    if not base or not Path(base).is_dir():
        pytest.skip("set CORRHASH_RAW_DIR to the folder of raw corpora (.ci/run passes ../shared/data)")
    return Path(base)


@pytest.fixture(scope="session")
def shards_20ng(raw_dir: Path, tmp_path_factory) -> Path:
    return prepared_once(tmp_path_factory, "20ng", lambda out: PrepareConfig(
        dataset="20ng", raw=raw_dir / "20news-bydate" / "20news-bydate.tar.xz", out=out))


@pytest.fixture(scope="session")
def shards_reuters(raw_dir: Path, tmp_path_factory) -> Path:
    return prepared_once(tmp_path_factory, "reuters", lambda out: PrepareConfig(
        dataset="reuters", raw=raw_dir / "reuters21578" / "reuters21578.tar.xz", out=out))


@pytest.fixture(scope="session")
def shards_20ng_small(raw_dir: Path, tmp_path_factory) -> Path:
    """Real 20ng, full vocabulary, a seeded sample of 1500 documents per split: for training tests."""
    return prepared_once(tmp_path_factory, "20ng-small", lambda out: PrepareConfig(
        dataset="20ng", raw=raw_dir / "20news-bydate" / "20news-bydate.tar.xz", out=out,
        limit=1500, rows_per_shard=500))  # 3 train shard files: 2 workers get a share each


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
