"""MLflow for a team (cluster/mlflow/): PostgreSQL on loopback, the basic-auth app, proxied artifacts; a tune whose
trials run at once logs every metric point to it."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from corrhash.runs.callbacks import TUNE_KEYS
from corrhash.tracking.runs import RUN_CONSTANTS
from pg_services import SERVE_SH, TeamMlflow, postgres_missing, script_env, start_team_mlflow, stop_team_mlflow
from services import BIN, REPO, free_port, service_env
from test_security import assert_loopback_only, copy_checkout, http_status, session_processes

pytestmark = pytest.mark.cluster
EPOCHS = 5
TRIALS = 4


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> TeamMlflow:
    missing = postgres_missing()
    if missing:
        print(f"skipping: {missing}")
        pytest.skip(missing)
    team = start_team_mlflow(tmp_path_factory.mktemp("team-mlflow"))
    yield team
    stop_team_mlflow(team)


def _basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def pg_port(team: TeamMlflow) -> int:
    return int((team.pg_dir / "port").read_text())


def test_only_the_right_password_gets_in_and_everything_listens_on_loopback(team, monkeypatch, tmp_path):
    search = f"{team.uri}/api/2.0/mlflow/experiments/search?max_results=5"
    assert http_status(search) == 401
    assert http_status(search, {"Authorization": "Basic " + _basic("admin", "not-the-password")}) == 401
    assert http_status(search, {"Authorization": "Basic " + _basic(team.username, team.password)}) == 200
    for name, value in team.client_env("not-the-password").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MlflowException, match="401|[Uu]nauthori"):
        MlflowClient(team.uri).create_experiment("refused")
    for name, value in team.client_env().items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(team.uri)
    run = client.create_run(client.create_experiment("team-check"))
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(1, 0.5)]

    # The admin manages users and passwords through the auth app's API (cluster/mlflow/README.md).
    users = get_app_client("basic-auth", tracking_uri=team.uri)
    users.create_user("member", "first-password-123")
    users.update_user_password("member", "second-password-456")
    for password, status in (("first-password-123", 401), ("second-password-456", 200)):
        assert http_status(search, {"Authorization": "Basic " + _basic("member", password)}) == status

    # PostgreSQL and MLflow listen on 127.0.0.1 only; the database wants its password on every connection.
    assert_loopback_only(session_processes(team.pids()), {pg_port(team), int(team.uri.rsplit(":", 1)[1])})
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=pg_port(team), user="mlflow", dbname="mlflow",
                         password="not-the-password", passfile="/dev/null")
    # Secrets stay in 0600 files: not in the rendered auth config, the database URIs or the server's log.
    for private in (team.pg_dir / "pgpass", team.mlflow_dir / "basic_auth.ini", team.password_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    database_password = (team.pg_dir / "pgpass").read_text().strip().rsplit(":", 1)[1]
    for text in ((team.mlflow_dir / "basic_auth.ini").read_text(), json.dumps(team.db_settings), team.log()):
        assert team.password not in text and database_password not in text

    # A password file others may read is refused before anything starts.
    loose = tmp_path / "loose-password"
    loose.write_text("a-password-others-can-read")
    loose.chmod(0o640)
    refused = subprocess.run(["bash", str(SERVE_SH), "start"], capture_output=True, text=True, timeout=60,
                             env=dict(script_env(tmp_path), **team.db_settings, CORRHASH_MLFLOW_DIR=str(tmp_path),
                                      CORRHASH_MLFLOW_ADMIN_PASSWORD_FILE=str(loose)))
    assert refused.returncode != 0 and "mode 640, readable by others" in refused.stderr, refused.stderr
    assert not (tmp_path / "mlflow.pid").exists()


def test_a_tune_with_concurrent_trials_logs_every_point(cluster, team, shards_synthetic, tmp_path, monkeypatch):
    # The job logs as a user without admin rights, created by the admin (cluster/mlflow/README.md, step 3).
    job_password = "jobs-password-" + secrets.token_hex(8)
    for name, value in team.client_env().items():
        monkeypatch.setenv(name, value)
    get_app_client("basic-auth", tracking_uri=team.uri).create_user("ray-jobs", job_password)
    job_env = dict(team.client_env(job_password), MLFLOW_TRACKING_USERNAME="ray-jobs")
    storage = tmp_path / "tune"
    args = ["--data", str(shards_synthetic), "--num-samples", str(TRIALS), "--max-concurrent", str(TRIALS),
            "--cpus-per-trial", "0.5", "--bits", "16", "--hidden", "32", "--epochs", str(EPOCHS), "--eval-k", "20",
            "--grace-period", str(EPOCHS), "--name", "team-tune", "--storage", str(storage)]
    # The job sees none of our environment: the server and the credentials travel in its runtime env.
    runtime_env = {"env_vars": {**job_env, "OMP_NUM_THREADS": "1"}}
    done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["head"].dashboard,
                           "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
                           "--", "python", "jobs/tune.py", *args],
                          env=cluster["head"].client_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]

    client = MlflowClient(team.uri)
    experiment = client.get_experiment_by_name("corrhash-tune")
    parent = client.search_runs([experiment.experiment_id], "tags.`corrhash.job` = 'team-tune'")[0]
    # The job's user created the experiment, so it manages it.
    users = get_app_client("basic-auth", tracking_uri=team.uri)
    assert users.get_user_permission("ray-jobs", "experiment", experiment.experiment_id).permission == "MANAGE"
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == TRIALS
    # The trials ran at once: each started before any ended.
    assert max(c.info.start_time for c in children) < min(c.info.end_time for c in children)

    # Every point Tune reported (its own result.json per trial) is in MLflow once, at its epoch.
    reported = {}
    for result_file in storage.glob("team-tune/*/result.json"):
        for line in result_file.read_text().splitlines():
            result = json.loads(line)
            for key, value in result.items():
                if key not in TUNE_KEYS and key not in RUN_CONSTANTS and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    reported.setdefault((result["trial_id"], key), []).append((result["epoch"], float(value)))
    assert len({trial for trial, _ in reported}) == TRIALS
    logged = {}
    for child in children:
        trial = child.data.tags["corrhash.trial"]
        for key in child.data.metrics:
            history = client.get_metric_history(child.info.run_id, key)
            logged[(trial, key)] = sorted((m.step, m.value) for m in history)
    assert logged.keys() == reported.keys()
    for series, points in reported.items():
        assert [step for step, _ in logged[series]] == list(range(1, EPOCHS + 1)), series  # no gap, no twice
        assert logged[series] == sorted(points), series  # the values Tune reported, exactly
    metrics_per_epoch = len({key for _, key in reported})
    assert sum(map(len, logged.values())) == TRIALS * EPOCHS * metrics_per_epoch

    # The registered model went up through the server into the artifacts destination.
    versions = [v for m in client.search_registered_models() for v in client.search_model_versions(f"name = '{m.name}'")]
    assert len(versions) == 1 and versions[0].source.startswith(("mlflow-artifacts:", "models:/")), versions
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    assert list(team.artifacts.rglob("model.safetensors")), sorted(team.artifacts.rglob("*"))[:20]
    assert "database is locked" not in team.log()


JOB = "from mlflow.tracking import MlflowClient; MlflowClient().create_experiment('from-local-sh')"


@pytest.mark.ray
def test_local_sh_start_postgres_brings_up_the_team_setup(shards_synthetic, tmp_path):
    missing = postgres_missing()
    if missing:
        print(f"skipping: {missing}")
        pytest.skip(missing)
    checkout = copy_checkout(tmp_path / "checkout", shards_synthetic)
    # As root, PostgreSQL's account must reach its data dir: pytest's base folder (0700 root) is in the way.
    state = Path(tempfile.mkdtemp(prefix="corrhash-cluster-", dir="/tmp")) if os.geteuid() == 0 \
        else checkout / ".cluster"
    ports = {name: free_port() for name in
             ("RAY_PORT", "DASHBOARD_PORT", "MLFLOW_PORT", "RAY_CLIENT_PORT", "DASHBOARD_AGENT_PORT")}
    env = dict(service_env(), **{k: str(v) for k, v in ports.items()}, CORRHASH_CLUSTER_DIR=str(state))
    del env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]  # as a user's shell: local.sh must set what it needs

    def local_sh(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "cluster/local.sh", *args], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=240)

    started = local_sh("start", "--postgres")
    pid_files = [*state.glob("*.pid"), state / "mlflow" / "mlflow.pid", state / "postgres" / "postgres.pid"]
    leaders = {int(p.read_text()) for p in pid_files if p.is_file()}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert len(leaders) == 3  # Ray, MLflow, PostgreSQL
        password_file = state / "mlflow-admin-password"
        password = password_file.read_text()
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600 and password not in started.stdout + started.stderr
        exports, job_submit, tune_submit = started.stdout.splitlines()[-3:]
        assert f'MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(cat {password_file})"' in exports
        pg = int((state / "postgres" / "port").read_text())
        assert_loopback_only(session_processes(leaders),
                             {ports["RAY_PORT"], ports["DASHBOARD_PORT"], ports["MLFLOW_PORT"], pg})
        mlflow_uri = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
        assert http_status(f"{mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=5") == 401

        # The printed lines in a user's shell, with a one-line job: it logs through the head's credentials.
        shell = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        shell.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
        job = job_submit.split(" -- ", 1)[0] + f' -- python -c "{JOB}"'
        ran = subprocess.run(["bash", "-euc", f"{exports}\n{job}"], cwd=checkout, env=shell, capture_output=True,
                             text=True, timeout=240)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert password not in job_submit + ran.stdout + ran.stderr
        experiment = subprocess.run(
            [sys.executable, "-c", "from mlflow.tracking import MlflowClient; "
             "print(MlflowClient().get_experiment_by_name('from-local-sh').artifact_location)"],
            env=dict(shell, MLFLOW_TRACKING_URI=mlflow_uri, MLFLOW_TRACKING_USERNAME="admin",
                     MLFLOW_TRACKING_PASSWORD=password), capture_output=True, text=True, timeout=60)
        assert experiment.stdout.strip().startswith("mlflow-artifacts:"), experiment.stdout + experiment.stderr
        logs = [*state.glob("*.log"), *state.glob("*/*.log")]
        assert len(logs) >= 3 and not [p for p in logs if password in p.read_text(errors="replace")]
    finally:
        stopped = local_sh("stop")
        for pid in session_processes(leaders):  # only if stop failed: leave nothing running
            os.kill(pid, signal.SIGKILL)
        if os.geteuid() == 0:
            shutil.rmtree(state, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not session_processes(leaders)
