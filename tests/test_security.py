"""The cluster's network and secrets posture (cluster/SECURITY.md): token auth on, loopback only, no leaks.

Socket tables are read from /proc; nothing here connects to anything but 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from services import BIN, auth_header, free_port, service_env

REPO = Path(__file__).resolve().parents[1]
TINY_TRAINING = ["--epochs", "2", "--bits", "16", "--hidden", "64"]  # appended to the README's job: the last flag wins
pytestmark = pytest.mark.cluster


def listening_sockets() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket on this host, v4 and v6."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(words)
            found[int(fields[9])] = (str(getattr(ip, "ipv4_mapped", None) or ip), int(port, 16))
    return found


def session_processes(session_ids: set[int]) -> list[int]:
    """Live (non-zombie) processes of these sessions: a service started with setsid and all its children."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) in session_ids:
            pids.append(int(entry.name))
    return pids


def listeners_of(pids: list[int]) -> set[tuple[str, int]]:
    sockets, found = listening_sockets(), set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # gone meanwhile
            continue
        found |= {sockets[int(link[8:-1])] for link in links
                  if link.startswith("socket:[") and int(link[8:-1]) in sockets}
    return found


def http_status(url: str, headers: dict | None = None, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def assert_loopback_only(pids: list[int], expected_ports: set[int], timeout: float = 60) -> None:
    # A script's start returns when its services answer; on a loaded machine an agent (Ray's dashboard agent) may
    # bind its port a little later: the expected ports are waited for, not assumed, before the table is judged.
    deadline = time.monotonic() + timeout
    found = listeners_of(pids)
    while not expected_ports <= {port for _, port in found} and time.monotonic() < deadline:
        time.sleep(1)
        found = listeners_of(pids)
    assert expected_ports <= {port for _, port in found}, (expected_ports, found)  # the table was read right
    exposed = {(ip, port) for ip, port in found if not ipaddress.ip_address(ip).is_loopback}
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"


def local_sh(command: str, env: dict, checkout: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "cluster/local.sh", command], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=180)


def readme_cluster_recipe() -> list[str]:
    """The commands of the README's "On a Ray cluster" block, comments dropped."""
    section = (REPO / "README.md").read_text().split("## On a Ray cluster", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#.*", "", line) for line in block.splitlines() if line.strip()]


def copy_checkout(target: Path, data: Path) -> Path:
    """What the recipe needs of a checkout after `make demo`: the code, the venv, and data/20ng-18828 (tiny here);
    a copy, so the recipe's $PWD/runs and .cluster stay out of the real checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("cluster", "jobs", "platform"):
        shutil.copytree(REPO / folder, target / folder, ignore=ignore)
    for name in (".gitignore", ".rayignore"):
        shutil.copy(REPO / name, target / name)
    (target / ".venv").symlink_to(BIN.parent)  # .gitignore keeps it out of the job's upload
    shutil.copytree(data, target / "data" / "20ng-18828")
    git = ["git", "-C", str(target), "-c", "user.name=corrhash", "-c", "user.email=ci@corrhash.invalid"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the checkout the recipe runs from"]):
        subprocess.run(git + command, check=True, capture_output=True)  # a clone has .git; Ray leaves it out
    return target


@pytest.mark.ray
def test_local_cluster_is_token_protected_loopback_only_and_runs_the_readme_recipe(tmp_path, shards_synthetic):
    checkout = copy_checkout(tmp_path / "checkout", shards_synthetic)
    state = checkout / ".cluster"
    ports = {name: free_port() for name in
             ("RAY_PORT", "DASHBOARD_PORT", "MLFLOW_PORT", "RAY_CLIENT_PORT", "DASHBOARD_AGENT_PORT")}
    env = dict(service_env(), **{k: str(v) for k, v in ports.items()})
    del env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]  # as a user's shell: local.sh must set what it needs
    started = local_sh("start", env, checkout)
    leaders = {int(p.read_text()) for p in state.glob("*.pid")}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        token_path = state / "auth_token"
        token = token_path.read_text()
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
        assert token not in started.stdout + started.stderr

        # The README's recipe, on this cluster's ports, is what `start` printed.
        mlflow_uri = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
        recipe = [line.replace("127.0.0.1:8265", f"127.0.0.1:{ports['DASHBOARD_PORT']}")
                  .replace("127.0.0.1:5000", mlflow_uri[len("http://"):]) for line in readme_cluster_recipe()]
        assert recipe[0] == "bash cluster/local.sh start" and recipe[-1] == "bash cluster/local.sh stop", recipe
        exports, job_submit, tune_submit, load_model = recipe[1:5]
        in_checkout = str(checkout)
        assert [line.replace("$PWD", in_checkout) for line in (exports, job_submit, tune_submit)] == \
               [line.replace("$PWD", in_checkout) for line in started.stdout.splitlines()[-3:]]
        assert f"MLflow UI: {mlflow_uri}/#/experiments?workflowType=machine_learning" in started.stdout

        processes = session_processes(leaders)
        assert_loopback_only(processes, {ports["RAY_PORT"], ports["DASHBOARD_PORT"], ports["MLFLOW_PORT"],
                                         ports["DASHBOARD_AGENT_PORT"]})

        # Without the token, neither job API runs anything.
        dashboard = f"http://127.0.0.1:{ports['DASHBOARD_PORT']}"
        marker = tmp_path / "tokenless-job-ran"
        job = {"entrypoint": f"touch {marker}"}
        agent = f"http://127.0.0.1:{ports['DASHBOARD_AGENT_PORT']}"
        assert http_status(f"{agent}/api/job_agent/jobs/", body=job) in (401, 403)
        assert http_status(f"{dashboard}/api/jobs/", body=job) in (401, 403)
        assert http_status(f"{dashboard}/api/jobs/") in (401, 403)
        assert http_status(f"{dashboard}/api/jobs/", auth_header(token_path)) == 200
        assert not marker.exists()

        # A second start is refused and leaves the first cluster as it was.
        again = local_sh("start", env, checkout)
        assert again.returncode != 0 and "refusing to start" in again.stderr, again.stdout + again.stderr
        other_dir = dict(env, CORRHASH_CLUSTER_DIR=str(tmp_path / "other"))
        again = local_sh("start", other_dir, checkout)
        assert again.returncode != 0 and "port" in again.stderr, again.stdout + again.stderr
        assert {int(p.read_text()) for p in state.glob("*.pid")} == leaders

        # With the token, the recipe runs as written in a user's shell (tiny data, 2 epochs, a small model) and
        # records where it says: the cluster's MLflow server and the absolute --storage, not Ray's copy of `.`.
        shell = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        shell.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
        trained = subprocess.run(["bash", "-euc", f"{exports}\n{job_submit} {' '.join(TINY_TRAINING)}"],
                                 cwd=checkout, env=shell, capture_output=True, text=True, timeout=400)
        assert trained.returncode == 0, trained.stdout[-4000:] + trained.stderr[-4000:]
        run_id = re.search(r"\(MLflow run (\w+)\)", trained.stdout).group(1)
        client = MlflowClient(mlflow_uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["corrhash.job"] == "ng64"
        assert sorted(m.step for m in client.get_metric_history(run_id, "val_precision")) == [1, 2]
        assert list((state / "mlartifacts").rglob("model.safetensors")), "the model is not in the server's store"
        assert list((checkout / "runs" / "ray" / "ng64").glob("checkpoint_*"))
        # Its lineage came from the submitting checkout, though Ray's copy of it has no .git (review F6).
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert run.data.tags["corrhash.source.git.dirty"] == "false"
        assert run.data.tags["corrhash.source.package"].startswith("gcs://_ray_pkg_")
        # The console shows the compact epoch line, not Ray Train's per-rank reports (F5).
        assert re.search(r"epoch\s+2  loss", trained.stdout + trained.stderr), trained.stdout[-3000:]
        assert "TrainingReport" not in trained.stdout + trained.stderr
        assert "Checkpoint successfully created" not in trained.stdout + trained.stderr

        # After the export line a job runs directly too, with RAY_ADDRESS in its http:// dashboard form (F2): the
        # search exports its live metrics to this cluster; a GCS address where nothing listens is named at once.
        searched = subprocess.run(["bash", "-euc", f"{exports}\necho 'space shuttle launch' | python jobs/search.py"
                                   f" --model runs:/{run_id}/model --corpus data/20ng-18828 --queries - --k 3"],
                                  cwd=checkout, env=shell, capture_output=True, text=True, timeout=300)
        assert searched.returncode == 0, searched.stderr[-3000:]
        assert len(json.loads(searched.stdout.splitlines()[0])["hits"]) == 3
        nowhere = f"127.0.0.1:{free_port()}"
        refused = subprocess.run(["bash", "-euc", f"{exports}\necho space | python jobs/search.py --model runs:/{run_id}/model"
                                  f" --corpus data/20ng-18828 --queries - --address {nowhere}"],
                                 cwd=checkout, env=shell, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and nowhere in refused.stderr, refused.stderr[-3000:]
        loaded = subprocess.run(["bash", "-euc", f"{exports}\n{load_model.replace('RUN_ID', run_id)}"],
                                cwd=checkout, env=shell, capture_output=True, text=True, timeout=180)
        assert loaded.returncode == 0 and "[[" in loaded.stdout, loaded.stdout + loaded.stderr[-3000:]
        session = re.search(r"(\S+/session_[\w-]+)/logs", (state / "ray.log").read_text()).group(1)
        assert not list(Path(session).rglob("mlflow.db")) and not (checkout / "mlflow.db").exists()

        # No log of ours or of Ray's session holds the token.
        logs = [*state.glob("*.log"), *(p for p in Path(session, "logs").rglob("*") if p.is_file())]
        assert logs and not [p for p in logs if token in p.read_text(errors="replace")]
    finally:
        stopped = local_sh("stop", env, checkout)
        for pid in session_processes(leaders):  # only if stop failed: leave nothing running
            os.kill(pid, signal.SIGKILL)
    assert stopped.returncode == 0, stopped.stderr
    assert not session_processes(leaders)
    taken = {port for _, port in listening_sockets().values()}
    assert not taken & set(ports.values()), taken & set(ports.values())


EMBEDDED = """
import json, sys, ray
from corrhash.launch.connect import init_ray
init_ray(None)
node = ray._private.worker._global_node
print(json.dumps({"dashboard": node.address_info["webui_url"],
                  "agent_port": node._ray_params.dashboard_agent_listen_port}), flush=True)
sys.stdin.read()  # until the test closes our stdin
ray.shutdown()
"""


@pytest.mark.ray
def test_embedded_ray_is_token_protected_loopback_only_with_a_private_token(tmp_path):
    env = dict(service_env(), HOME=str(tmp_path))  # Ray's default token file is ~/.ray/auth_token
    del env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]
    env.pop("RAY_AUTH_MODE")  # a user's shell: unset
    child = subprocess.Popen([sys.executable, "-c", EMBEDDED], cwd=REPO, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = json.loads(child.stdout.readline() or "null")
        assert ready, "init_ray failed"
        token_path = tmp_path / ".ray" / "auth_token"
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        # Ray gives the agent no HTTP port (-1) when the default is taken, e.g. by another local Ray.
        agent_ports = {ready["agent_port"]} - {-1}
        assert_loopback_only(session_processes({child.pid}), {int(ready["dashboard"].rsplit(":", 1)[1]), *agent_ports})
        job = {"entrypoint": "true"}
        for port in agent_ports:
            assert http_status(f"http://127.0.0.1:{port}/api/job_agent/jobs/", body=job) in (401, 403)
        assert http_status(f"http://{ready['dashboard']}/api/jobs/", body=job) in (401, 403)
        assert http_status(f"http://{ready['dashboard']}/api/jobs/", auth_header(token_path)) == 200
        child.stdin.close()
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)


def test_test_cluster_is_token_protected_and_loopback_only(cluster):
    head = cluster["head"]
    assert stat.S_IMODE(head.token_path.stat().st_mode) == 0o600
    ports = {int(address.rsplit(":", 1)[1]) for address in (head.gcs, head.dashboard)}
    assert_loopback_only(session_processes({head.process.pid}), ports)
    assert http_status(f"{head.dashboard}/api/jobs/", body={"entrypoint": "true"}) in (401, 403)
    assert http_status(f"{head.dashboard}/api/jobs/", auth_header(head.token_path)) == 200
