"""The team's MLflow for integration tests: a real PostgreSQL (private initdb dir, 127.0.0.1 only) and an MLflow
server on it behind the basic-auth app with proxied artifacts, started and stopped by the scripts a team runs
(cluster/mlflow/postgres.sh and serve.sh), so the tests exercise those scripts."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services import BIN, REPO, free_port

POSTGRES_SH = REPO / "cluster" / "mlflow" / "postgres.sh"
SERVE_SH = REPO / "cluster" / "mlflow" / "serve.sh"


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot be started here (the script's own message), or None when its binaries exist."""
    found = subprocess.run(["bash", str(POSTGRES_SH), "bindir"], capture_output=True, text=True)
    return None if found.returncode == 0 else found.stderr.strip()


@dataclass
class TeamMlflow:
    uri: str
    username: str
    password: str
    password_file: Path
    pg_dir: Path
    """postgres.sh's state: data/, pgpass, postgres.pid, postgres.log"""
    mlflow_dir: Path
    """serve.sh's state: basic_auth.ini, mlflow.pid, mlflow.log"""
    artifacts: Path
    db_settings: dict
    """CORRHASH_MLFLOW_DB_URI, CORRHASH_MLFLOW_AUTH_DB_URI and PGPASSFILE, as postgres.sh printed them"""

    def client_env(self, password: str | None = None) -> dict:
        """A client's environment: MLflow's own settings for a basic-auth server."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password if password is None else password}

    def log(self) -> str:
        return (self.mlflow_dir / "mlflow.log").read_text(errors="replace")

    def pids(self) -> set[int]:
        """Session leaders still recorded: the postmaster and the MLflow server (each leads its own session)."""
        files = [self.pg_dir / "postgres.pid", self.mlflow_dir / "mlflow.pid"]
        return {int(f.read_text()) for f in files if f.is_file()}


def script_env(workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CORRHASH_", "PG"))}
    return dict(env, PATH=f"{BIN}:{env.get('PATH', '')}", MLFLOW_DISABLE_TELEMETRY="true", HOME=str(workdir))


def run_script(script: Path, command: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", str(script), command], env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} {command} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def start_team_mlflow(workdir: Path, workers: int = 2) -> TeamMlflow:
    # As root, PostgreSQL runs as a system account that must be able to reach its data dir; pytest's base
    # folder is 0700 root, so the database then lives in a folder of its own under /tmp.
    pg_dir = Path(tempfile.mkdtemp(prefix="corrhash-pg-", dir="/tmp")) if os.geteuid() == 0 else workdir / "pg"
    mlflow_dir = workdir / "mlflow"
    env = script_env(workdir)
    try:
        started = run_script(POSTGRES_SH, "start", dict(env, CORRHASH_PG_DIR=str(pg_dir)))
        settings = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
        settings = {k: shlex.split(v)[0] for k, v in settings.items()}
        password_file = workdir / "mlflow-admin-password"
        with os.fdopen(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(18))
        port = free_port()
        team = TeamMlflow(f"http://127.0.0.1:{port}", "admin", password_file.read_text(), password_file, pg_dir,
                          mlflow_dir, workdir / "mlartifacts", settings)
        run_script(SERVE_SH, "start", dict(env, **settings, CORRHASH_MLFLOW_DIR=str(team.mlflow_dir),
                                           CORRHASH_MLFLOW_PORT=str(port), CORRHASH_MLFLOW_WORKERS=str(workers),
                                           CORRHASH_MLFLOW_ARTIFACTS=str(team.artifacts),
                                           CORRHASH_MLFLOW_ADMIN_PASSWORD_FILE=str(password_file)))
    except BaseException:  # whatever did start is stopped
        stop_mlflow(mlflow_dir, env)
        stop_postgres(pg_dir, env)
        raise
    return team


def stop_mlflow(mlflow_dir: Path, env: dict) -> None:
    subprocess.run(["bash", str(SERVE_SH), "stop"], env=dict(env, CORRHASH_MLFLOW_DIR=str(mlflow_dir)),
                   capture_output=True, timeout=120)


def stop_postgres(pg_dir: Path, env: dict) -> None:
    subprocess.run(["bash", str(POSTGRES_SH), "stop"], env=dict(env, CORRHASH_PG_DIR=str(pg_dir)),
                   capture_output=True, timeout=120)
    if os.geteuid() == 0:
        shutil.rmtree(pg_dir, ignore_errors=True)


def stop_team_mlflow(team: TeamMlflow) -> None:
    """serve.sh stop and postgres.sh stop; then SIGKILL whatever of their sessions is left."""
    leaders = team.pids()
    env = script_env(team.mlflow_dir.parent)
    stop_mlflow(team.mlflow_dir, env)
    stop_postgres(team.pg_dir, env)
    for pid in leaders:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:  # stopped, as it should be
            pass
