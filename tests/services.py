"""Real services for integration tests: a Ray head (token auth on) and an MLflow server on loopback, stopped by PID."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_header(token_path: Path) -> dict:
    return {"Authorization": f"Bearer {token_path.read_text()}"}


def wait_http(url: str, timeout: float, process: subprocess.Popen, log: Path, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the service we started, then SIGKILL whatever is left in its process group."""
    if process.poll() is None:
        # The leader only: `ray start --block` stops its children in order; a group-wide SIGTERM
        # makes it wait ~30 s for children that are already exiting.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is already empty
        pass
    process.wait(10)


def write_token(path: Path) -> Path:
    """A Ray auth token in a new file only its owner can read (Ray's own default file is 0644)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(secrets.token_hex(32))
    return path


def service_env(token_path: Path | None = None, multi_node: bool = False) -> dict:
    """The environment for our services and their clients: token auth on, read from token_path; Ray in single-node
    mode (everything on 127.0.0.1) unless `multi_node` (a second node may join; see cluster/SECURITY.md)."""
    # The venv first on PATH: `ray job submit -- python ...` resolves python from the head's PATH.
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               MLFLOW_DISABLE_TELEMETRY="true", RAY_AUTH_MODE="token",
               # An MLflow server without its ~10 idle huey job consumers (cluster/local.sh says why).
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               # Ray's single-node mode: the node address, agents and client proxy stay on 127.0.0.1.
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1" if multi_node else "0")
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    if token_path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return env


@dataclass
class RayHead:
    process: subprocess.Popen
    dashboard: str
    gcs: str
    token_path: Path
    multi_node: bool = False
    temp: Path | None = None
    """the head's --temp-dir: Ray writes prom_metrics_service_discovery.json there"""
    extra_env: dict | None = None
    """what the head's processes and its clients get beside service_env (the session's S3 endpoint and keys)"""

    def client_env(self) -> dict:
        """For `ray job submit`, drivers and nodes joining this head: they read the token from its 0600 file."""
        return dict(service_env(self.token_path, self.multi_node), **(self.extra_env or {}))


def start_ray_head(workdir: Path, num_cpus: int = 2, multi_node: bool = False, extra_env: dict | None = None) -> RayHead:
    port, dashboard_port, client_port, agent_port = free_port(), free_port(), free_port(), free_port()
    log = workdir / ("ray-head-multi.log" if multi_node else "ray-head.log")
    token_path = write_token(workdir / ("ray-auth-token-multi" if multi_node else "ray-auth-token"))
    temp = Path("/tmp") / f"ray-{os.getpid()}-{port}"  # Ray's socket paths must stay short
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={client_port}",
         f"--dashboard-agent-listen-port={agent_port}", f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp}",
         "--include-dashboard=true", "--disable-usage-stats"],
        # No drain on stop (default up to 30 s, which a Ray Train run's leftovers never finish): the head is stopped
        # once, at the session's end, when no job of it matters any more.
        env=dict(service_env(token_path, multi_node), **(extra_env or {}), RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"),
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    wait_http(f"{dashboard}/api/version", 120, process, log, auth_header(token_path))
    return RayHead(process, dashboard, f"127.0.0.1:{port}", token_path, multi_node, temp, extra_env)


@dataclass
class S3Service:
    """moto's S3 server on loopback: `env` is what pyarrow (and so corrhash and Ray) reads to reach it."""
    process: subprocess.Popen
    endpoint: str

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self):
        """A pyarrow S3 filesystem on it, from the same settings as `env`."""
        from pyarrow import fs

        env = self.env
        return fs.S3FileSystem(endpoint_override=self.endpoint.removeprefix("http://"), scheme="http",
                               access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                               region=env["AWS_DEFAULT_REGION"], allow_bucket_creation=True)


def start_s3(workdir: Path) -> S3Service:
    port = free_port()
    log = workdir / "moto.log"
    process = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint, 60, process, log)
    return S3Service(process, endpoint)


def start_prometheus(workdir: Path, config: Path) -> tuple[subprocess.Popen, str]:
    """A Prometheus on 127.0.0.1 with its own data folder, reading `config`."""
    port = free_port()
    log = workdir / "prometheus.log"
    process = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
         f"--storage.tsdb.path={workdir / 'prometheus-data'}"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/ready", 60, process, log)
    return process, url


def start_mlflow_server(workdir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """An MLflow server on 127.0.0.1 (a free port, or `port`: the same server started again) storing in `workdir`."""
    port = port or free_port()
    log = workdir / f"mlflow-server-{port}.log"
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
         "--artifacts-destination", str(workdir / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=service_env(), stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health", 120, process, log)
    return process, uri


def submitted_commit() -> str:
    """What the README's submit line passes as CORRHASH_GIT_COMMIT: this checkout's commit (-dirty when tracked
    files changed), or "" outside a git checkout."""
    described = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40",
                                "--exclude=*"], capture_output=True, text=True)
    return described.stdout.strip() if described.returncode == 0 else ""


def submit(cluster: dict, args: list[str], wait: bool = True, timeout: float = 400,
           job: str = "jobs/train.py") -> subprocess.CompletedProcess:
    """`ray job submit -- python JOB ARGS` to the test cluster, as the README does it: this checkout as the
    working dir, the cluster's MLflow server passed in the runtime env (the job does not see our environment)."""
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": cluster["mlflow"], "OMP_NUM_THREADS": "1",
                                "CORRHASH_GIT_COMMIT": submitted_commit()}}
    command = [str(BIN / "ray"), "job", "submit", "--address", cluster["head"].dashboard, "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env)] + ([] if wait else ["--no-wait"])
    command += ["--", "python", job] + args
    deadline = time.monotonic() + 90
    while True:
        done = subprocess.run(command, env=cluster["head"].client_env(), capture_output=True, text=True,
                              timeout=timeout)
        # A fresh (or busy) head's dashboard answers before its job agent has registered; Ray says to retry.
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(3)


def driver_command(cluster: dict, args: list[str], job: str = "jobs/train.py") -> list[str]:
    """`python JOB ARGS` as a driver connected to the test cluster with --address (no `ray job submit`: no CLI
    start-up, upload or job supervisor), logging to the cluster's MLflow server."""
    return [sys.executable, job, *args, "--address", cluster["head"].gcs, "--mlflow-uri", cluster["mlflow"]]


def driver_env(cluster: dict) -> dict:
    return dict(cluster["head"].client_env(), OMP_NUM_THREADS="1")


def drive(cluster: dict, args: list[str], job: str = "jobs/train.py", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a job's driver against the test cluster to its end. `submit` stays where the submit path itself is under
    test (the README recipe, lineage and the runtime env, the lost worker, the team credentials, the ablation)."""
    return subprocess.run(driver_command(cluster, args, job), cwd=REPO, env=driver_env(cluster), capture_output=True,
                          text=True, timeout=timeout)
