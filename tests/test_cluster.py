"""Ray Train + MLflow against a real Ray head and a real MLflow server on loopback (no mocks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyarrow.fs import FileSelector

import corrhash
from corrhash.data import TfidfFeaturizer, TfidfShards
from corrhash.data.shards import upload
from corrhash.models import ModelConfig, create_model
from corrhash.retrieval import pack_codes
from corrhash.tracking.runs import ensure_experiment
from corrhash.train import checkpoint
from conftest import BUCKET
from services import BIN, submit

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["The space shuttle launch window opens at dawn.", "My hard drive controller fails under DOS.",
         "Who will win the hockey playoffs this year?"]
SMALL_MODEL = ["--bits", "16", "--hidden", "64"]
pytestmark = pytest.mark.cluster


@pytest.fixture
def shards(shards_20ng_small) -> Path:
    return shards_20ng_small


def runs_for_job(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name("corrhash")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`corrhash.job` = '{name}'")


def run_for_job(client: MlflowClient, name: str):
    runs = runs_for_job(client, name)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_precision"))


def checkpoint_state(storage: Path, name: str) -> dict:
    latest = sorted(p for p in (storage / name).glob("checkpoint_*") if p.is_dir())[-1]
    return checkpoint.read(latest)


def test_job_submit_trains_logs_and_resumes(cluster, shards, tmp_path):
    storage = tmp_path / "ray-storage"
    # Streamed from the shard files (data/stream.py) on the Ray Train worker, through a resume; the other cluster
    # tests train on splits held whole.
    args = ["--data", str(shards), *SMALL_MODEL, "--epochs", "3", "--name", "job-a", "--storage", str(storage),
            "--cpus-per-worker", "0.5", "--stream", "always", "--stream-buffer", "300"]
    done = submit(cluster, args)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    client = MlflowClient(cluster["mlflow"])
    run = run_for_job(client, "job-a")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.bits"] == "16" and run.data.params["train.epochs"] == "3"
    assert run.data.tags["data.content_hash"] == TfidfShards(shards).content_hash
    assert epochs_logged(client, run.info.run_id) == [1, 2, 3]
    assert 0 <= run.data.metrics["test_precision_at_100"] <= 1
    assert run.data.params["train.stream"] == "always"
    assert run.data.tags["streamed"] == "1" and "streamed" not in run.data.metrics  # a run's constant: a tag

    # The registered artifact encodes text exactly like the trained weights in the last checkpoint.
    state = checkpoint_state(storage, "job-a")
    model = create_model(ModelConfig(name="corrsh", bits=16, hidden=64), TfidfShards(shards).n_features)
    model.load_state_dict(state["best_weights"])
    featurizer = TfidfFeaturizer.load(shards / "vocab.json")
    expected = pack_codes(model.eval().encode(torch.from_numpy(featurizer.transform(TEXTS).toarray())))
    mlflow.set_tracking_uri(cluster["mlflow"])
    loaded = corrhash.load(f"runs:/{run.info.run_id}/model")
    np.testing.assert_array_equal(loaded.encode(TEXTS), expected)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert pyfunc.predict(TEXTS) == [row.tobytes().hex() for row in expected]

    # Running the same job name again resumes from its checkpoint: epochs 4-5 only, same MLflow run.
    done = submit(cluster, [a if a != "3" else "5" for a in args])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    again = run_for_job(client, "job-a")
    assert again.info.run_id == run.info.run_id
    assert epochs_logged(client, run.info.run_id) == [1, 2, 3, 4, 5]
    assert client.get_run(run.info.run_id).data.tags["streamed"] == "1"


def registered_epoch(run_storage: Path) -> int:
    """The epoch of the latest checkpoint Ray Train has registered (0 if none yet)."""
    try:
        snapshot = json.loads((run_storage / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    return int(((snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}).get("epoch", 0))


def ray_train_workers(head) -> list[int]:
    """The Ray Train workers of this test's head only: the suite's other lanes run their own Ray clusters, whose
    workers a machine-wide listing would also name (CI once killed another lane's worker here)."""
    listing = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    parent, workers = {}, []
    for line in listing.splitlines()[1:]:
        pid, ppid, *args = line.split(None, 2)
        parent[int(pid)] = int(ppid)
        if args and "ray::RayTrainWorker" in args[0]:
            workers.append(int(pid))

    def under_head(pid: int) -> bool:
        while pid > 1:
            if pid == head.process.pid:
                return True
            pid = parent.get(pid, 0)
        return False

    return [pid for pid in workers if under_head(pid)]


# The worker is killed once epoch 2's checkpoint is registered; the 10 epochs after it (0.3-2 s each here) keep the
# job alive well past the kill, which lands within a poll (0.2 s) of the registration.
FAULT_EPOCHS = 12


def test_lost_worker_resumes_from_last_checkpoint(cluster, shards, tmp_path):
    storage = tmp_path / "ray-storage"
    args = ["--data", str(shards), *SMALL_MODEL, "--epochs", str(FAULT_EPOCHS), "--name", "job-fault",
            "--storage", str(storage), "--num-workers", "2", "--cpus-per-worker", "0.5", "--max-failures", "2"]
    done = submit(cluster, args, wait=False)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"raysubmit_\w+", done.stdout + done.stderr).group(0)
    client = MlflowClient(cluster["mlflow"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until Ray Train has registered epoch 2's checkpoint
        killed_after = registered_epoch(storage / "job-fault")
        if killed_after >= 2 and len(ray_train_workers(cluster["head"])) == 2:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the job never checkpointed epoch 2")
    runs = runs_for_job(client, "job-fault")
    victim = ray_train_workers(cluster["head"])[-1]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    env = cluster["head"].client_env()
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--follow", "--address", cluster["head"].dashboard,
                           job_id], env=env, capture_output=True, text=True, timeout=400).stdout
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", cluster["head"].dashboard, job_id],
                            env=env, capture_output=True, text=True).stdout
    assert "succeeded" in status.lower(), logs[-4000:]
    assert logs.count("Started training worker group") >= 2  # the group was restarted
    steps = epochs_logged(client, runs[0].info.run_id)
    assert sorted(set(steps)) == list(range(1, FAULT_EPOCHS + 1))
    # Epochs up to the checkpoint taken before the kill were not trained again.
    restart = logs.rfind("Started training worker group")
    assert all(steps.count(epoch) == 1 for epoch in range(1, killed_after + 1)), (steps, logs[restart - 6000:restart + 3000])
    assert checkpoint_state(storage, "job-fault")["epoch"] == FAULT_EPOCHS


def test_two_workers_match_one_worker(cluster, s3, shards, tmp_path):
    """Same global batch and schedule on 1 and 2 CPU workers: the same val precision within noise. The two-worker
    run reads its data from S3 and checkpoints there (--data and --storage s3:// URIs, on the session's S3
    endpoint): each worker reads its share of the train shards from the bucket, and Ray gets the storage URI
    unchanged; the one-worker run reads the same shards from their folder."""
    # Both drivers at once: 3 workers at 0.5 CPU fit the test head's 2 CPUs, and each run's result depends
    # only on its seeds and its number of workers, not on what else the cluster runs, so running them side by
    # side overlaps their start-up and shut-down (most of each run's time) without changing what is compared.
    ensure_experiment(MlflowClient(cluster["mlflow"]), "corrhash")  # not by both drivers at once
    data_uri, storage_uri = f"s3://{BUCKET}/scale-data", f"s3://{BUCKET}/scale-ray"
    upload(shards, data_uri)
    where = {1: (str(shards), str(tmp_path / "ray-storage")), 2: (data_uri, storage_uri)}
    drivers, logs = {}, {workers: open(tmp_path / f"w{workers}.log", "w") for workers in (1, 2)}
    for workers in (1, 2):
        drivers[workers] = subprocess.Popen(
            [sys.executable, "jobs/train.py", "--data", where[workers][0], "--bits", "32", "--hidden", "200",
             "--epochs", "10", "--batch-size", "20", "--lr", "5e-3", "--num-workers", str(workers),
             "--cpus-per-worker", "0.5", "--address", cluster["head"].gcs, "--name", f"scale-{workers}",
             "--storage", where[workers][1], "--mlflow-uri", cluster["mlflow"], "--skip-test",
             "--out", str(tmp_path / f"w{workers}")],
            # A file, not a pipe: one driver must not stall on a full pipe while we wait on the other.
            cwd=REPO, env=cluster["head"].client_env(), stdout=logs[workers], stderr=subprocess.STDOUT)
    results, written = {}, {}
    try:
        for workers, driver in drivers.items():
            driver.wait(timeout=600)
            assert driver.returncode == 0, (tmp_path / f"w{workers}.log").read_text()[-6000:]
            written[workers] = json.loads((tmp_path / f"w{workers}" / "results.json").read_text())
            results[workers] = written[workers]["val_precision"]
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        for log in logs.values():
            log.close()
    print(f"val precision@100 by number of workers: {results}")
    table = subprocess.run([sys.executable, "jobs/quality_table.py", str(tmp_path / "w1" / "results.json"),
                            str(tmp_path / "w2" / "results.json")], cwd=REPO, capture_output=True, text=True)
    assert table.returncode == 0 and "ray_train, val p@100" in table.stdout, table.stdout + table.stderr
    assert results[1] > 0.08 and results[2] > 0.08, results  # both learned (chance is 0.05)
    assert abs(results[1] - results[2]) < 0.04, results
    # The S3 run: its data named by the URI, the same content as the folder, and its checkpoints in the bucket.
    assert written[2]["data"] == data_uri and written[2]["content_hash"] == TfidfShards(shards).content_hash
    stored = [info.path for info in s3.filesystem().get_file_info(FileSelector(f"{BUCKET}/scale-ray/scale-2",
                                                                               recursive=True))]
    assert any("/checkpoint_" in path for path in stored), stored
    assert not (REPO / "s3:").exists()  # no local folder named after a collapsed URI
