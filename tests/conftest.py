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
from services import start_mlflow_server, start_ray_head, start_s3, stop

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One compute thread per xdist worker, and for the processes it starts (jobs, drivers, benchmarks): three
    # workers on two cores each running torch's default of one thread per core spin-wait on each other's cores.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Under `pytest -n 3 --dist loadgroup` (make test) the tests that start services run in two lanes, each on one
    xdist worker, one test after another, mostly waiting on start-ups, jobs and polls:
    - "services": the `cluster`-marked tests on the session's shared Ray head and MLflow server;
    - "runtimes": the `ray`-marked tests, which start a Ray runtime of their own (`local.sh`, a multi-node head, an
      embedded `ray.init`, a job process without --address) and never the shared head.
    At most two Ray runtimes run at once, each sized for the tests' 2 CPUs. The third worker (the CPU lane) takes
    everything else, and a lane that ends early takes CPU tests too. Both service lanes go first in the run's
    order, so that the longest lanes start at once."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("runtimes"))
        elif item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.xdist_group("services"))
    items.sort(key=lambda item: not any(m.name == "xdist_group" for m in item.iter_markers()))


@pytest.fixture(autouse=True)
def builtin_print_restored():
    """Each test leaves `print` as it found it: an in-process ray.init (Ray Data's progress bars, tqdm_ray) replaces
    it, and numba, compiling pynndescent's or UMAP's kernels in a later test on the same xdist worker, cannot type
    a replaced print (seen: test_graph failing after test_bad_input_train's embedded Ray)."""
    import builtins

    saved = builtins.print
    yield
    builtins.print = saved


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
                          name="synthetic", recipe=TfidfRecipe(min_df=2, max_df=1.0), rows_per_shard=80))
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


# The training tests' vocabulary: the 3,000 most frequent terms, not the default 10,000. Measured (issue 30): a
# quality-floor training is only ~10% faster (nash 25.6 s vs ~28 s), but every method clears the floor by a wider
# margin (on 10,000 terms corrsh-mixture-nbr fell below it); each assertion's margin is stated where it is made.
SMALL_VOCABULARY = 3000


@pytest.fixture(scope="session")
def shards_20ng_small(raw_dir: Path, tmp_path_factory) -> Path:
    """Real 20ng, a seeded sample of 1500 documents per split, its 3,000 most frequent terms: for training tests."""
    return prepared_once(tmp_path_factory, "20ng-small", lambda out: PrepareConfig(
        dataset="20ng", raw=raw_dir / "20news-bydate" / "20news-bydate.tar.xz", out=out,
        recipe=TfidfRecipe(max_features=SMALL_VOCABULARY),
        limit=1500, rows_per_shard=500))  # 3 train shard files: 2 workers get a share each


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow server on loopback (SQLite + a local artifacts folder) for the session: its URI."""
    process, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield uri
    stop(process)


@pytest.fixture(scope="session")
def s3_service(tmp_path_factory):
    """A real S3 endpoint (moto's server) on loopback for the session, or None without moto (the "test" extra)."""
    try:
        import moto  # noqa: F401
    except ImportError:
        yield None
        return
    service = start_s3(tmp_path_factory.mktemp("moto"))
    yield service
    stop(service.process)


BUCKET = "corrhash-test"


@pytest.fixture
def s3(s3_service, monkeypatch):
    """The session's S3 endpoint with bucket BUCKET, its keys in this test's environment (pyarrow reads them)."""
    if s3_service is None:
        pytest.skip('needs moto[server] (the "test" extra)')
    for name, value in s3_service.env.items():
        monkeypatch.setenv(name, value)
    s3_service.filesystem().create_dir(BUCKET)
    return s3_service


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, mlflow_server, s3_service):
    """The session's shared Ray head (single-node mode, token auth) and the MLflow server its jobs log to. The head,
    its jobs and drivers reach the session's S3 endpoint, so a cluster test can put --data or --storage there."""
    workdir = tmp_path_factory.mktemp("cluster")
    head = start_ray_head(workdir, extra_env=s3_service.env if s3_service else None)
    yield {"head": head, "mlflow": mlflow_server, "workdir": workdir}
    stop(head.process, timeout=60)
