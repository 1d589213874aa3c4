"""jobs/tune.py on a real cluster: trials, the registry, the champion, search. The first search goes through `ray job
submit`, as the README does; the others are drivers connected with --address (tests/services.drive), which cost
no CLI start-up, upload or job supervisor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from corrhash.data import TfidfShards
from corrhash.data.readers.ng20 import read_20ng
from corrhash.runs.finish import RESULT_KEYS
from conftest import BUCKET
from services import drive, driver_command, driver_env, service_env, submit

REPO = Path(__file__).resolve().parents[1]
NAME = "corrhash-20ng-32b"
# Settings under which 1,500 documents learn well past chance in a few epochs (see test_train.FAST).
LEARNS = ["--bits", "32", "--hidden", "200", "--epochs", "8", "--batch-size", "20", "--grace-period", "3",
          "--cpus-per-trial", "1", "--max-concurrent", "2"]
pytestmark = pytest.mark.cluster


def test_tune_registers_a_champion_that_finds_related_documents(cluster, shards_20ng_small, raw_dir, tmp_path):
    client = MlflowClient(cluster["mlflow"])
    done = submit(cluster, ["--data", str(shards_20ng_small), *LEARNS, "--num-samples", "4", "--name", "tune-a",
                            "--storage", str(tmp_path / "tune"), "--space", "lr=loguniform:3e-3:8e-3",
                            "--out", str(tmp_path / "best")], job="jobs/tune.py", timeout=600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    # The trial table shows the metric searched on (ecosystem review t4, N2), without a line per checkpoint.
    console = done.stdout + done.stderr
    headers = [line for line in console.splitlines() if "Trial name" in line and "status" in line]
    assert any("val_precision" in line and "best_val_precision" in line for line in headers), headers
    assert "Checkpoint successfully created" not in console and "ignoring passed-in ProgressReporter" not in console
    results = json.loads((tmp_path / "best" / "results.json").read_text())
    assert list(results) == list(RESULT_KEYS) and results["launcher"] == "tune"
    table = subprocess.run([sys.executable, "jobs/quality_table.py", str(tmp_path / "best" / "results.json")],
                           cwd=REPO, capture_output=True, text=True)
    assert table.returncode == 0 and f"{results['test_precision']:.4f}" in table.stdout, table.stderr
    # One checkpoint per trial is kept (the latest, holding the best weights), not one per epoch.
    for trial in (tmp_path / "tune" / "tune-a").glob("trial_*"):
        assert len(list(trial.glob("checkpoint_*"))) == 1, sorted(trial.iterdir())
    champion = client.get_model_version_by_alias(NAME, "champion")
    parent = client.search_runs([client.get_experiment_by_name("corrhash-tune").experiment_id],
                                filter_string="tags.`corrhash.job` = 'tune-a'")[0]
    assert parent.data.tags["champion.decision"].startswith(f"{NAME} v{champion.version} is the new champion")
    assert float(champion.tags["val_precision"]) == pytest.approx(parent.data.metrics["best_val_precision_at_100"],
                                                                  abs=1e-6)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4 and all("model.rank" in c.data.params for c in children)
    assert all(c.info.status == "FINISHED" and c.info.end_time for c in children)  # ended with their trial
    for child in children:  # fewer than --epochs 8 (patience is 20): ASHA stopped it, and the run says so
        stopped = len(client.get_metric_history(child.info.run_id, "val_precision")) < 8
        assert (child.data.tags.get("corrhash.stopped_by") == "scheduler") == stopped, child.data.tags
    # The parent records what the best trial trained with, and the space readably.
    assert float(parent.data.params["train.lr"]) == pytest.approx(float(parent.data.tags["best.lr"]))
    assert parent.data.params["space.lr"] == "loguniform:3e-3:8e-3"
    # The Optuna study is kept beside the Tune state; the parent run carries its figures.
    assert (tmp_path / "tune" / "tune-a" / "optuna.db").is_file()
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/optimization_history.png", "figures/param_importances.png",
            "figures/best_trial_val_precision.png"} <= figures, figures
    assert parent.inputs.dataset_inputs[0].dataset.digest == TfidfShards(shards_20ng_small).content_hash[:32]
    assert champion.tags["data.content_hash"] == TfidfShards(shards_20ng_small).content_hash and champion.description
    assert all(len(client.get_metric_history(c.info.run_id, "val_precision")) >= 1 for c in children)

    # Search with the champion: hits share the query's newsgroup far more often than chance.
    shards = TfidfShards(shards_20ng_small)
    train = shards.split("train")
    label_of = dict(zip(train.doc_ids.tolist(), train.labels.argmax(axis=1).tolist()))
    posts = [d for d in read_20ng(raw_dir / "20news-bydate" / "20news-bydate.tar.xz").documents
             if d.split == "test"][::150][:40]
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(" ".join(p.text.split()) + "\n" for p in posts))
    env = dict(service_env(), MLFLOW_TRACKING_URI=cluster["mlflow"])
    found = subprocess.run([sys.executable, "jobs/search.py", "--model", f"models:/{NAME}@champion", "--corpus",
                            str(shards_20ng_small), "--index-out", str(tmp_path / "index.npz"),
                            "--queries", str(queries), "--k", "10"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-3000:]
    answers = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(answers) == len(posts) and all(len(a["hits"]) == 10 for a in answers)
    names = shards.label_names
    hit_rate = np.mean([label_of[h["id"]] == names.index(p.labels[0]) for a, p in zip(answers, posts)
                        for h in a["hits"]])
    chance = np.mean([train.labels[:, names.index(p.labels[0])].mean() for p in posts])
    assert hit_rate > 1.5 * chance, (hit_rate, chance)
    assert all(h["labels"] == [names[label_of[h["id"]]]] for a in answers for h in a["hits"])  # its newsgroup
    again = subprocess.run([sys.executable, "jobs/search.py", "--model", f"models:/{NAME}@champion", "--index",
                            str(tmp_path / "index.npz"), "--queries", str(queries), "--k", "10"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # The saved index answers the same, labels included: it keeps what hits show.
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads(line) for line in again.stdout.splitlines()] == answers

    # A second tune that cannot learn (lr fixed near 0) registers a version but leaves the champion.
    done = drive(cluster, ["--data", str(shards_20ng_small), *LEARNS, "--num-samples", "1", "--name", "tune-b",
                           "--storage", str(tmp_path / "tune"), "--space", "lr=1e-9"], job="jobs/tune.py")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 2
    worse = client.search_runs([parent.info.experiment_id], filter_string="tags.`corrhash.job` = 'tune-b'")[0]
    assert "not promoted" in worse.data.tags["champion.decision"]


def test_stopped_tune_resumes_without_redoing_trials(cluster, s3, shards_20ng_small, tmp_path):
    """A tune stopped as `ray job stop` stops it, run again under its name: it resumes from the search's state, which
    lives under --storage on S3 (the session's S3 endpoint, which the head and the drivers reach), and no trial
    that had finished is trained again."""
    client = MlflowClient(cluster["mlflow"])
    args = ["--data", str(shards_20ng_small), "--bits", "16", "--hidden", "64", "--epochs", "4", "--num-samples", "4",
            "--max-concurrent", "1", "--grace-period", "4", "--name", "tune-resume", "--storage", f"s3://{BUCKET}/tune"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(driver_command(cluster, args, "jobs/tune.py"), cwd=REPO, env=driver_env(cluster),
                              stdout=log, stderr=subprocess.STDOUT)

    def completed() -> list:  # trials that reported all 4 epochs
        return [r for r in children() if len(client.get_metric_history(r.info.run_id, "val_precision")) == 4]

    def children() -> list:
        experiment = client.get_experiment_by_name("corrhash-tune")
        parents = client.search_runs([experiment.experiment_id], "tags.`corrhash.job` = 'tune-resume'") \
            if experiment else []
        if not parents:
            return []
        runs = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
        return runs

    import time
    deadline = time.monotonic() + 300
    try:
        while len(completed()) < 2:
            assert time.monotonic() < deadline, "two trials never finished"
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-5000:]
            time.sleep(0.5)
        time.sleep(3)  # let Tune snapshot its state (every second, see jobs/tune.py)
        driver.terminate()  # what `ray job stop` sends a job's driver first
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    assert "resuming from" not in (tmp_path / "driver.log").read_text()  # the first run started afresh
    first = {r.data.tags["corrhash.trial"] for r in completed()}
    stopped = client.search_runs([client.get_experiment_by_name("corrhash-tune").experiment_id],
                                 "tags.`corrhash.job` = 'tune-resume'")[0]
    assert stopped.info.status == "KILLED"  # no run is left RUNNING by a stopped job
    assert all(r.info.status != "RUNNING" for r in children())

    done = drive(cluster, args, job="jobs/tune.py")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert f"tune tune-resume: resuming from s3://{BUCKET}/tune/tune-resume" in done.stdout + done.stderr
    final = children()
    trials = [r.data.tags["corrhash.trial"] for r in final]
    assert len(set(trials)) == 4 and len(trials) == 4  # one child run per trial, none run twice
    assert all(r.info.status == "FINISHED" for r in final)
    for run in final:  # 4 epochs each: trials finished before the stop were not trained again
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_precision")]
        assert sorted(steps) == [1, 2, 3, 4] or run.data.tags["corrhash.trial"] not in first, steps
    assert first <= set(trials)


def test_search_across_two_models_records_each_and_registers_the_better(cluster, shards_synthetic, tmp_path):
    """`--models nash,sth`: one conditional study on the shared head; every child run says which model it trained
    and with which values, the parent each model's best, and the registered version is the better model's."""
    client = MlflowClient(cluster["mlflow"])
    done = drive(cluster, ["--data", str(shards_synthetic), "--models", "nash,sth", "--bits", "12", "--hidden", "32",
                           "--batch-size", "20", "--num-samples", "4", "--max-epochs", "4", "--grace-period", "2",
                           "--cpus-per-trial", "1", "--max-concurrent", "2", "--name", "tune-multi",
                           "--storage", str(tmp_path / "tune"), "--out", str(tmp_path / "best")], job="jobs/tune.py")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    parent = client.search_runs([client.get_experiment_by_name("corrhash-tune").experiment_id],
                                filter_string="tags.`corrhash.job` = 'tune-multi'")[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4
    best_of: dict[str, float] = {}
    for child in children:
        model = child.data.tags["model"]
        assert model in ("nash", "sth") and child.data.params["model.name"] == model
        if model == "sth":  # a closed-form trial reports once (epoch 0) and ends
            assert [m.step for m in client.get_metric_history(child.info.run_id, "val_precision")] == [0]
        best_of[model] = max(best_of.get(model, 0.0), child.data.metrics["best_val_precision"])
    assert set(best_of) == {"nash", "sth"}, best_of  # the seeded sampler draws both
    for model, value in best_of.items():
        assert parent.data.metrics[f"best_val_precision.{model}"] == pytest.approx(value)
        assert parent.data.tags[f"best_trial.{model}"]
    assert parent.data.params["models"] == "nash,sth" and "space.sth.neighbours" in parent.data.params
    winner = max(best_of, key=best_of.get)
    results = json.loads((tmp_path / "best" / "results.json").read_text())
    assert results["model"]["name"] == winner and results["tuned"]["name"] == winner
    version = client.get_model_version("corrhash-synthetic-12b", results["registered_version"].rpartition("/")[2])
    assert version.tags["model"] == winner and json.loads(version.tags["config.model"]) == results["model"]
    # the winner's own budget: a start-up trial's --grace-period (2) or a leader's --max-epochs (4) (runs/space.py)
    assert json.loads(version.tags["config.train"])["epochs"] == results["train"]["epochs"] in (2, 4)
    assert float(version.tags["val_precision"]) == pytest.approx(best_of[winner], abs=1e-6)


@pytest.mark.cluster
def test_neighbour_model_trials_share_one_cached_document_graph(cluster, shards_synthetic, tmp_path):
    """Graph models tune like any other: a search over nash-nbr and snuh, whose trials (two at a time) read one
    graph, searched by the tune's driver (as Ray tasks) before they start, beside a fresh copy of the shards. Ray
    folds log lines repeated across workers into one "[repeated Nx ...]" line, so a second search would show as a
    repeat of the searching line. The budget rule (runs/space.py) gives each family its start-up trial at its
    default recipe for the --grace-period epochs (snuh's own fixed KL weight), then the leader's default."""
    data = shutil.copytree(shards_synthetic, tmp_path / "shards", ignore=shutil.ignore_patterns("graphs"))
    done = drive(cluster, ["--data", str(data), "--models", "nash-nbr,snuh", "--neighbours", "6", "--graph", "knn",
                           "--bits", "8", "--hidden", "16", "--batch-size", "20", "--num-samples", "3",
                           "--max-epochs", "3", "--grace-period", "1", "--cpus-per-trial", "1", "--max-concurrent", "2",
                           "--name", "tune-nbr", "--storage", str(tmp_path / "tune"), "--out", str(tmp_path / "best")],
                 job="jobs/tune.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    searching = [line for line in output.splitlines() if "document graph: searching" in line]
    assert len(searching) == 1 and "repeated" not in searching[0] and "pid=" not in searching[0], searching
    assert "blocks searched on Ray" in output and "document graph: reused" in output  # by the trials
    (graph,) = (data / "graphs").glob("*.npz")
    assert "-train-exact-w25-" in graph.name  # the space's k (6, pinned) is served by the 25-wide lists
    client = MlflowClient(cluster["mlflow"])
    parent = client.search_runs([client.get_experiment_by_name("corrhash-tune").experiment_id],
                                filter_string="tags.`corrhash.job` = 'tune-nbr'")[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3 and parent.data.tags["budget_rule"].startswith("Over several models")
    epochs = {child.info.run_id: int(child.data.metrics["epoch"]) for child in children}
    # the start-up rung (1 epoch: --grace-period) once per family, then one leader's default at the full budget
    assert sorted(child.data.params["model.name"] for child in children if epochs[child.info.run_id] == 1) == [
        "nash-nbr", "snuh"] and sorted(epochs.values()) == [1, 1, 3]
    kinds = {child.data.tags["budget"]: epochs[child.info.run_id] for child in children if child.data.tags["budget"]
             == "leader default"}  # tagged, and ASHA (runs/scheduler.py) let it run its 3 epochs
    assert kinds == {"leader default": 3}
    for child in children:
        model = child.data.params["model.name"]
        assert child.data.params["model.neighbours"] == "6" and child.data.metrics["neighbour"] != 0
        assert (child.data.params["model.beta"], child.data.params["train.lr"]) == (
            ("0.05", "0.001") if model == "snuh" else ("1.0", "0.001"))  # each family's default recipe
