"""Real services for integration tests: a Ray head and an MLflow server on loopback, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group we started (the service and its children), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def service_env() -> dict:
    # The venv first on PATH: `ray job submit -- python ...` resolves python from the head's PATH.
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               MLFLOW_DISABLE_TELEMETRY="true", RAY_AUTH_MODE="disabled")  # loopback only
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class RayHead:
    process: subprocess.Popen
    dashboard: str
    gcs: str


def start_ray_head(workdir: Path, num_cpus: int = 2) -> RayHead:
    port, dashboard_port = free_port(), free_port()
    log = workdir / "ray-head.log"
    temp = Path("/tmp") / f"ray-{os.getpid()}-{port}"  # Ray's socket paths must stay short
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--num-cpus={num_cpus}",
         "--num-gpus=0", f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats"],
        env=service_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    wait_http(f"{dashboard}/api/version", 120, process, log)
    return RayHead(process, dashboard, f"127.0.0.1:{port}")


def start_mlflow_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = workdir / "mlflow-server.log"
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
         "--artifacts-destination", str(workdir / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=service_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health", 120, process, log)
    return process, uri
