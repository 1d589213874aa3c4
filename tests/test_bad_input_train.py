"""Bad input to jobs/train.py and jobs/tune.py: a named exit-2 error, nothing written, no run left RUNNING.

Most cases are refused before Ray starts, so they run in-process in milliseconds on a tiny synthetic
corpus. The cases that need Ray (a worker or trial failing, resources no node has) share one embedded
Ray in `test_ray_failures_exit_2_and_mark_runs_failed`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import mlflow
from mlflow.tracking import MlflowClient

from badinput import assert_named_error, job, run_job, tree
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.data.shards import Split
from corrhash.errors import ConfigError, DataError
from corrhash.models import ModelConfig
from corrhash.tracking.registry import promote_if_better
from corrhash.models import model_class
from corrhash.runs.spec import RunSpec
from corrhash.tracking.runs import ensure_experiment, filter_value, final_metrics, start_or_resume_run
from corrhash.train import TrainConfig, fit
from corrhash.launch.preflight import job_lock
from test_data_files import LOOSE, synthetic_rows, write_jsonl

SMALL = ["--bits", "8", "--hidden", "16", "--epochs", "1", "--batch-size", "20", "--eval-k", "10"]
TUNE_SMALL = [*SMALL, "--grace-period", "1", "--num-samples", "1", "--cpus-per-trial", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """150 synthetic documents in 3 topics: train 120 (3 shard files), val 15, test 15."""
    root = tmp_path_factory.mktemp("train-bad")
    raw = write_jsonl(root / "docs.jsonl", synthetic_rows(150))
    prepare(PrepareConfig(dataset="text", raw=raw, out=root / "data", recipe=LOOSE, rows_per_shard=40))
    return root / "data"


def variant(data: Path, tmp_path: Path, change) -> Path:
    """A copy of the shard folder, changed by `change(folder)`."""
    copy = tmp_path / "data-copy"
    shutil.copytree(data, copy)
    change(copy)
    return copy


def manifest_as(value):
    return lambda folder: (folder / "manifest.json").write_text(json.dumps(value))


def without_splits(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["splits"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


# (case id, extra argv, change to the data copy or None, text the error must name)
LOCAL_CASES = [
    ("lr-inf", ["--lr", "inf"], None, "lr=inf"),
    ("lr-nan", ["--lr", "nan"], None, "lr=nan"),
    ("anneal-nan", ["--anneal-step", "nan"], None, "anneal_step"),
    ("anneal-inf", ["--anneal-step", "inf"], None, "anneal_step"),
    ("device-bogus", ["--device", "bogus"], None, "device='bogus'"),
    ("device-cuda-on-cpu", ["--device", "cuda"], None, "device='cuda'"),
    ("eval-k-too-big", ["--eval-k", "100000"], None, "--eval-k 100000"),
    ("no-vocab", [], lambda folder: (folder / "vocab.json").unlink(), "vocab.json"),
    ("manifest-list", [], manifest_as([1, 2]), "manifest.json"),
    ("manifest-no-splits", [], without_splits, "manifest.json"),
]


@pytest.mark.parametrize("case, argv, change, named", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_train_local_refuses_before_writing(case, argv, change, named, data, tmp_path, capsys):
    if case == "device-cuda-on-cpu":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this build has CUDA")
    folder = variant(data, tmp_path, change) if change else data
    out = tmp_path / "out"
    status, stderr = run_job("train", ["--local", "--data", folder, "--out", out, *SMALL, *argv], capsys)
    assert_named_error(status, stderr, named)
    assert not out.exists()  # nothing created before the inputs were checked
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data-copy"] if change else [])


def test_train_local_missing_data_creates_no_out(tmp_path, capsys):
    status, stderr = run_job("train", ["--local", "--data", tmp_path / "nothing", "--out", tmp_path / "out"], capsys)
    assert_named_error(status, stderr, tmp_path / "nothing" / "manifest.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "foreign-folder"])
def test_train_local_refuses_an_out_that_is_not_a_run(kind, data, tmp_path, capsys):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("notes")
    else:
        out.mkdir()
        (out / "thesis.txt").write_text("mine")
    before = tree(out)
    status, stderr = run_job("train", ["--local", "--data", data, "--out", out, *SMALL], capsys)
    assert_named_error(status, stderr, "--out", out)
    assert tree(out) == before


def test_failed_rerun_keeps_the_previous_run_and_a_diverging_run_saves_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    status, stderr = run_job("train", ["--local", "--data", data, "--out", out, *SMALL], capsys)
    assert status == 0, stderr
    before = tree(out)
    assert {"metrics.jsonl", "results.json", "model/model.safetensors"} <= set(before)
    # lr 1e30 passes validation (finite, > 0) and blows the loss up in the first steps.
    status, stderr = run_job("train", ["--local", "--data", data, "--out", out, *SMALL, "--lr", "1e30"], capsys)
    assert_named_error(status, stderr, "non-finite loss", "epoch 1, step", "recon", "kl")
    assert tree(out) == before  # the previous run is whole: metrics, model and results agree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary sibling left


def test_fit_stops_on_a_nan_value_naming_epoch_and_step(data):
    """Shards with a NaN value (the data package will refuse them; the loop must not depend on it)."""
    rng = np.random.default_rng(0)
    features = sp.random(60, 30, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    features.data[5] = np.nan
    labels = np.eye(3, dtype=bool)[np.arange(60) % 3]
    split = Split("train", features, labels, np.arange(60))
    saved = []
    with pytest.raises(DataError, match=r"non-finite loss at epoch 1, step \d+ of 3 \(loss nan"):
        fit(ModelConfig(name="nash", bits=8, hidden=16), TrainConfig(epochs=2, batch_size=20, eval_k=10), split,
            val=split, on_epoch=lambda metrics, state: saved.append(metrics))
    assert saved == []  # stopped inside the first epoch: nothing reported, nothing checkpointed


# tune.py cases refused in the driver before Ray starts (names, space, grace period, resources, data).
TUNE_CASES = [
    ("name-traversal", ["--name", "../../x"], "--name '../../x'"),
    ("name-quote", ["--name", "it's"], "--name \"it's\""),
    ("name-leading-dot", ["--name", ".hidden"], "--name '.hidden'"),
    ("grace-above-epochs", ["--grace-period", "5"], "--grace-period 5"),
    ("cpus-nan", ["--cpus-per-trial", "nan"], "--cpus-per-trial nan"),
    ("gpus-negative", ["--gpus-per-trial", "-1"], "--gpus-per-trial -1"),
    ("dropout-out-of-range", ["--space", "dropout=1.5"], "dropout"),
    ("dropout-range", ["--space", "dropout=uniform:0.5:1.5"], "dropout"),
    ("rank-float", ["--space", "rank=uniform:0:4"], "rank"),
    ("lr-negative", ["--space", "lr=choice:0.001,-1"], "lr"),
    ("empty-range", ["--space", "mixture=randint:5:2"], "mixture"),
    ("anneal-nan", ["--anneal-step", "nan"], "anneal_step"),
    ("flag-and-space", ["--dropout", "0.1", "--space", "dropout=uniform:0:0.3"], "--dropout 0.1"),
    ("cuda-without-gpus", ["--device", "cuda"], "--gpus-per-trial"),
    ("unknown-method", ["--models", "corrsh,bogus"], "bogus"),
    ("dimension-the-model-lacks", ["--model", "nash", "--space", "rank=randint:0:4"], "nash does not use 'rank'"),
    ("dimension-no-model-has", ["--models", "sph,lsh", "--space", "lr=loguniform:1e-4:1e-2"], "'lr'"),
    ("other-models-dimension", ["--models", "nash,sth", "--space", "corrsh.rank=randint:0:4"], "corrsh"),
    ("max-epochs-zero", ["--max-epochs", "0"], "--max-epochs"),
]


@pytest.mark.parametrize("case, argv, named", TUNE_CASES, ids=[c[0] for c in TUNE_CASES])
def test_tune_refuses_before_ray_starts(case, argv, named, data, tmp_path, capsys):
    import ray

    storage = tmp_path / "tune"
    status, stderr = run_job("tune", ["--data", data, *TUNE_SMALL, "--storage", storage,
                                      "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *argv], capsys)
    assert_named_error(status, stderr, named)
    assert not ray.is_initialized()
    assert not (tmp_path / "x").exists() and not storage.exists() and not (tmp_path / "mlflow.db").exists()


def test_tune_flags_pin_their_dimension_and_tuned_values_route_to_their_config(data):
    """--dropout on tune fixes that dimension (not silently replaced by the default space); a trial's values
    reach ModelConfig/TrainConfig through RunSpec.with_overrides, the one routing."""
    _, spec, spaces, _ = job("tune").parse_args(["--data", str(data), "--dropout", "0.1", "--lr", "0.002"])
    specs = spaces["corrsh"]
    assert specs["dropout"] == 0.1 and specs["lr"] == 0.002 and specs["rank"] == model_class("corrsh").search_space["rank"]
    tuned = spec.with_overrides({"dropout": 0.3, "rank": 4, "lr": 0.01, "batch_size": 50})
    assert (tuned.model.dropout, tuned.model.rank, tuned.train.lr, tuned.train.batch_size) == (0.3, 4, 0.01, 50)
    assert RunSpec.from_dict(tuned.to_dict()) == tuned
    with pytest.raises(ConfigError, match="seed: both"):
        spec.with_overrides({"seed": 1})


def test_final_metric_names_follow_eval_k():
    results = {"eval_k": 10, "val_precision": 0.5, "best_epoch": 3, "test_precision": 0.4,
               "test_precision_ordered": 0.39}
    assert set(final_metrics(results)) == {"best_val_precision_at_10", "best_epoch", "test_precision_at_10",
                                           "test_precision_ordered_at_10"}


def test_train_ray_path_refuses_a_bad_name_before_ray(data, tmp_path, capsys):
    import ray

    status, stderr = run_job("train", ["--data", data, *SMALL, "--name", "../escape", "--storage", tmp_path / "s",
                                       "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], capsys)
    assert_named_error(status, stderr, "--name '../escape'")
    assert not ray.is_initialized() and sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("job", ["train", "tune"])
def test_inside_a_ray_job_the_defaults_that_vanish_are_refused(job, data, tmp_path, capsys, monkeypatch):
    """`ray job submit` does not pass the submitter's environment on: the README recipe's defaults
    would put MLflow and checkpoints into Ray's temporary copy of the working dir (R1)."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    argv = ["--data", data, *(TUNE_SMALL if job == "tune" else SMALL), "--storage", tmp_path / "abs"]
    status, stderr = run_job(job, argv, capsys)
    assert_named_error(status, stderr, "raysubmit_1", "--runtime-env-json", "MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    status, stderr = run_job(job, [*argv[:-2], "--storage", "runs/relative"], capsys)
    assert_named_error(status, stderr, "--storage 'runs/relative'", "absolute")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_second_live_job_with_the_same_name_is_refused(data, tmp_path, capsys):
    storage = tmp_path / "tune"
    with job_lock(str(storage), "busy"):  # a live holder (this process, another open file)
        status, stderr = run_job("tune", ["--data", data, *TUNE_SMALL, "--name", "busy", "--storage", storage,
                                          "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], capsys)
        assert_named_error(status, stderr, "--name busy", f"pid {os.getpid()}")
    with job_lock(str(storage), "busy"):  # released at exit, and a lock file left behind is taken over
        pass


def test_mlflow_filters_quote_names_and_champion_needs_a_strict_win(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = ensure_experiment(client, "bad-input")
    run_id, resumed = start_or_resume_run(client, experiment, "it's", {}, {})
    assert not resumed
    assert start_or_resume_run(client, experiment, "it's", {}, {}) == (run_id, True)
    assert client.search_runs([experiment], "tags.`corrhash.job` = " + filter_value('say "hi"')) == []

    name = "corrhash-ties"
    client.create_registered_model(name)
    versions = [client.create_model_version(name, f"runs:/{run_id}/model", run_id).version for _ in range(4)]
    assert promote_if_better(client, name, versions[0], 0.803)[0]
    assert not promote_if_better(client, name, versions[1], 0.8030000000000002)[0]  # a tie (R6)
    assert client.get_model_version(name, versions[1]).tags["val_precision"] == "0.8030000000000002"
    assert not promote_if_better(client, name, versions[2], 0.803 - 4e-7)[0]
    assert promote_if_better(client, name, versions[3], 0.803 + 4e-7)[0]  # was lost to the 6-digit rounding
    assert client.get_model_version_by_alias(name, "champion").version == versions[3]
    # Scored on other data (another content hash): never compared, never moved.
    client.set_model_version_tag(name, versions[3], "data.content_hash", "a" * 64)
    other = client.create_model_version(name, f"runs:/{run_id}/model", run_id).version
    promoted, decision = promote_if_better(client, name, other, 0.99, content_hash="b" * 64)
    assert not promoted and "other data" in decision
    assert client.get_model_version_by_alias(name, "champion").version == versions[3]


def assert_error_line(status: int, stderr: str, *names: str) -> None:
    """Exit 2 and one `error:` line naming each of `names`. Not `assert_named_error`: Ray and Tune log a
    failed worker's or trial's traceback themselves; that the job's own exception did not escape
    `main` is what `run_job` proves."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 2 and lines, f"exit {status}, stderr:\n{stderr[-3000:]}"
    for name in names:
        assert str(name) in lines[-1], f"{name!r} not named in: {lines[-1]}"


@pytest.mark.slow
@pytest.mark.ray
def test_ray_failures_exit_2_and_mark_runs_failed(data, tmp_path, capsys):
    """One embedded Ray for the cases only Ray can show: a Train worker and a Tune trial that hit a
    damaged shard, and a trial no node can hold (it used to wait PENDING forever)."""
    import ray

    def truncate(folder: Path) -> None:
        shard = folder / "train" / "part-00000.parquet"
        shard.write_bytes(shard.read_bytes()[:200])

    damaged = variant(data, tmp_path, truncate)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    common = ["--data", damaged, *SMALL, "--mlflow-uri", uri, "--storage", tmp_path / "storage"]
    try:
        status, stderr = run_job("train", [*common, "--name", "bad-shard", "--max-failures", "0",
                                           "--cpus-per-worker", "0.5"], capsys)
        assert_error_line(status, stderr, "part-00000.parquet")
        run = client.search_runs([client.get_experiment_by_name("corrhash").experiment_id])[0]
        assert run.info.status == "FAILED"

        status, stderr = run_job("tune", [*common, "--name", "too-big", "--grace-period", "1", "--num-samples", "1",
                                          "--cpus-per-trial", "8"], capsys)
        assert_error_line(status, stderr, "--cpus-per-trial 8")

        status, stderr = run_job("tune", [*common, "--name", "no-checkpoint", "--grace-period", "1",
                                          "--num-samples", "1", "--cpus-per-trial", "0.5"], capsys)
        assert_error_line(status, stderr, "no trial produced a checkpoint", "part-00000.parquet")
        runs = client.search_runs([client.get_experiment_by_name("corrhash-tune").experiment_id])
        parents = [r.data.tags["corrhash.job"] for r in runs if "corrhash.job" in r.data.tags]
        assert parents == ["no-checkpoint"]  # too-big made none
        assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs)  # the parent and its trial's run
    finally:
        ray.shutdown()


def run_with_a_model(data, tmp_path: Path, name: str):
    """(tracking URI, client, run id, model folder): a fresh job run in a sqlite store and a tiny LSH model."""
    import torch

    from corrhash.artifact import save_model
    from corrhash.models import create_model
    from corrhash.data import TfidfShards

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id, _ = start_or_resume_run(client, ensure_experiment(client, name), f"{name}-job", {}, {})
    shards = TfidfShards(data)
    torch.manual_seed(0)
    model_dir = save_model(tmp_path / "model", create_model(ModelConfig(name="lsh", bits=8), shards.n_features),
                           shards.vocab)
    return uri, client, run_id, model_dir


def test_logged_model_leaves_the_run_running_and_names_its_version(data, tmp_path):
    """R8: logging used to end the run FINISHED before registration and the champion decision.
    R7: the job promotes the version its own log_model created, not the newest one."""
    from corrhash.tracking.runs import log_hashing_model

    uri, client, run_id, model_dir = run_with_a_model(data, tmp_path, "log")
    client.create_registered_model("corrhash-log")
    client.create_model_version("corrhash-log", f"runs:/{run_id}/other", run_id)  # v1: someone else's
    info = log_hashing_model(uri, run_id, model_dir, ["a shuttle launch"], registered_name="corrhash-log")
    assert str(info.registered_model_version) == "2"
    assert client.get_run(run_id).info.status == "RUNNING"
    client.create_model_version("corrhash-log", f"runs:/{run_id}/other", run_id)  # v3: a concurrent job's
    newest = max(client.search_model_versions("name = 'corrhash-log'"), key=lambda v: int(v.version))
    assert str(newest.version) == "3"  # what the job used to promote


def test_a_rerun_of_a_finished_publish_registers_no_second_version(data, tmp_path):
    """A rerun of a finished tune reaches publish_model again: it reuses the version its run registered."""
    from corrhash.tracking.runs import publish_model

    uri, client, run_id, model_dir = run_with_a_model(data, tmp_path, "rerun")
    results = {"eval_k": 10, "val_precision": 0.5, "best_epoch": 0, "epochs_run": 1, "test_precision": 0.4,
               "test_precision_ordered": 0.4}
    first = publish_model(client, uri, run_id, model_dir, results, "corrhash-rerun")
    again = publish_model(client, uri, run_id, model_dir, results, "corrhash-rerun")
    assert first == again and first["registered_version"] == "corrhash-rerun/1"
    assert len(client.search_model_versions("name = 'corrhash-rerun'")) == 1
    assert client.get_run(run_id).data.metrics["test_precision_at_10"] == 0.4


def test_the_published_model_carries_its_metrics_dataset_and_installable_requirements(data, tmp_path):
    """Review t3 F3, F4, F11: MLflow 3's Models tab compares logged models by the metrics linked to them (it
    showed "Metrics (0)"); a requirement with a local label (`torch==2.13.0+cpu`) is on no package index; an
    experiment without a kind opens on the GenAI overview."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    from corrhash.data import TfidfShards
    from corrhash.tracking.runs import log_data, pinned_requirements, publish_model

    uri, client, run_id, model_dir = run_with_a_model(data, tmp_path, "linked")
    log_data(client, run_id, TfidfShards(data))
    results = {"eval_k": 10, "val_precision": 0.5, "best_epoch": 3, "epochs_run": 4, "test_precision": 0.4,
               "test_precision_ordered": 0.38}
    published = publish_model(client, uri, run_id, model_dir, results)
    model_id = published["model_uri"].removeprefix("models:/")
    linked = {m.key: m for m in client.get_logged_model(model_id).metrics}
    assert linked["test_precision_at_10"].value == 0.4 and linked["best_val_precision_at_10"].value == 0.5
    # Each metric is linked to the split it was measured on (ecosystem review t4, N9), not the training data.
    inputs = {tag.value: entry.dataset for entry in client.get_run(run_id).inputs.dataset_inputs for tag in entry.tags
              if tag.key == "mlflow.data.context"}
    assert set(inputs) == {"training", "validation", "testing"}
    name = TfidfShards(data).manifest["dataset"]
    assert (inputs["validation"].name, inputs["testing"].name) == (f"{name}-val", f"{name}-test")
    assert (linked["test_precision_at_10"].dataset_name, linked["test_precision_at_10"].dataset_digest) == \
        (inputs["testing"].name, inputs["testing"].digest)
    for key in ("best_val_precision_at_10", "best_epoch"):
        assert (linked[key].dataset_name, linked[key].dataset_digest) == \
            (inputs["validation"].name, inputs["validation"].digest)
    assert client.get_run(run_id).data.metrics["test_precision_at_10"] == 0.4  # still the run's metrics too

    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    location = client.get_logged_model(model_id).artifact_location
    logged = Path(mlflow.artifacts.download_artifacts(f"{location}/requirements.txt", tracking_uri=uri,
                                                      dst_path=str(tmp_path / "req")))
    requirements = [Requirement(line) for line in logged.read_text().split() if line and not line.startswith("-")]
    assert {r.name for r in requirements} >= {"torch", "mlflow", "numpy"}
    for requirement in requirements:
        for spec in requirement.specifier:
            assert Version(spec.version).local is None, f"{requirement}: not installable from a package index"
    assert all("+" not in line for line in pinned_requirements())
