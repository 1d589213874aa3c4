"""jobs/ablate.py on a real two-node Ray cluster (the shared head plus a second node joined to it) with a real MLflow
server: cells run on both nodes, killing the second node mid-grid still completes the grid with every cell exactly
once FINISHED, a rerun starts no cell, and the report's numbers are MLflow's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from services import BIN, free_port, start_ray_head, stop, submit, submitted_commit

EXPERIMENT = "corrhash-ablations"


def write_grid(path: Path, data: Path, epochs: int) -> Path:
    path.write_text(f"""name: two-node
data:
  synthetic: {data}
methods:
  nash: {{}}
  corrsh: {{rank: 2, mixture: 2}}
bits: [8, 16]
seeds: [0, 1]
fixed: {{epochs: {epochs}, patience: {epochs}, hidden: 32, eval_k: 20}}
resources: {{cpus: 1, gpus: 0}}
""")
    return path


def start_second_node(head, workdir: Path) -> subprocess.Popen:
    log = workdir / "ray-node2.log"
    ports = {name: free_port() for name in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "runtime-env-agent-port")}
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", f"--address={head.gcs}", "--block", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", "--num-gpus=0", "--min-worker-port=20000", "--max-worker-port=20999",
         *[f"--{name}={port}" for name, port in ports.items()], "--disable-usage-stats"],
        env=head.client_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        nodes = alive_nodes(head)
        if len(nodes) >= 2:
            return process
        if process.poll() is not None:
            raise RuntimeError(f"second node exited {process.returncode}: {log.read_text()[-3000:]}")
        time.sleep(1)
    raise TimeoutError(f"second node did not join: {log.read_text()[-3000:]}")


def alive_nodes(head) -> list[dict]:
    out = subprocess.run([str(BIN / "ray"), "list", "nodes", "--address", head.dashboard, "--format", "json",
                          "--filter", "state=ALIVE"], env=head.client_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "No resource in the cluster":  # a head just started may not be registered yet
        return []
    return json.loads(out.stdout)


def head_node_id(head, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        heads = [n["node_id"] for n in alive_nodes(head) if n["is_head_node"]]
        if heads:
            return heads[0]
        time.sleep(1)
    raise TimeoutError(f"the head at {head.dashboard} never listed itself as an alive node")


def cell_runs(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`corrhash.ablation` = '{name}' "
                              "and tags.`corrhash.cell` != ''", max_results=1000)


@pytest.mark.cluster
@pytest.mark.ray
def test_ablation_across_two_nodes_survives_a_lost_node(mlflow_server, shards_synthetic, tmp_path):
    """Its own head, in Ray's multi-node mode (the shared head is single-node: nothing can join it), with 1 CPU; the
    second node has 1 CPU too; the session's MLflow server records."""
    head = start_ray_head(tmp_path, num_cpus=1, multi_node=True)
    try:
        _two_node_ablation(head, {"head": head, "mlflow": mlflow_server}, shards_synthetic, tmp_path)
    finally:
        stop(head.process, timeout=60)


def _two_node_ablation(head, cluster: dict, shards_synthetic: Path, tmp_path: Path) -> None:
    client = MlflowClient(cluster["mlflow"])
    grid = write_grid(tmp_path / "grid.yaml", shards_synthetic, epochs=40)
    args = ["--grid", str(grid), "--out", str(tmp_path / "ablations")]
    head_id = head_node_id(head)
    node2 = start_second_node(head, tmp_path)
    try:
        submitted = submit(cluster, args, wait=False, job="jobs/ablate.py")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = re.search(r"raysubmit_\w+", submitted.stdout).group(0)

        # Kill the second node (raylet, workers, agents) once it has finished a cell and is running another.
        deadline, killed_running = time.monotonic() + 300, []
        while time.monotonic() < deadline and not killed_running:
            time.sleep(0.5)
            runs = cell_runs(client, "two-node")
            on_node2 = [r for r in runs if r.data.tags["corrhash.node"] != head_id]
            if any(r.info.status == "FINISHED" for r in on_node2):
                killed_running = [r.data.tags["corrhash.cell"] for r in on_node2 if r.info.status == "RUNNING"]
        assert killed_running, "the second node never finished a cell and started another"
        finished_before_kill = sum(r.info.status == "FINISHED" for r in runs)
        assert finished_before_kill < 8, "the grid finished before the node could be killed"
        print(f"killing the second node after {finished_before_kill} of 8 cells", flush=True)
        os.killpg(node2.pid, signal.SIGKILL)
        node2.wait(10)

        logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", head.dashboard, "--follow", job_id],
                              env=head.client_env(), capture_output=True, text=True, timeout=600)
        status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", head.dashboard, job_id],
                                env=head.client_env(), capture_output=True, text=True, timeout=60)
        assert "succeeded" in status.stdout.lower(), logs.stdout[-5000:] + status.stdout
    finally:
        if node2.poll() is None:
            os.killpg(node2.pid, signal.SIGKILL)

    runs = cell_runs(client, "two-node")
    cells = [r.data.tags["corrhash.cell"] for r in runs]
    assert len(runs) == 8 and len(set(cells)) == 8, sorted(cells)  # every cell exactly once
    assert set(killed_running) <= set(cells)  # the cell the kill interrupted was rerun and recorded once
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["corrhash.node"] for r in runs}) == 2  # both nodes ran cells
    assert {r.data.tags["axis.method"] for r in runs} == {"nash", "corrsh"}
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    # Every cell carries the driver's lineage, though cells run in Ray tasks on a copy without .git (review F6).
    commit = submitted_commit()
    lineage = {key: parent.data.tags.get(key) for key in
               ("mlflow.source.name", "mlflow.user", "corrhash.source.git.dirty", "corrhash.source.package",
                "mlflow.source.git.commit")}
    assert lineage["corrhash.source.package"].startswith("gcs://_ray_pkg_")
    assert lineage["mlflow.source.git.commit"] == (commit.removesuffix("-dirty") or None)
    assert lineage["corrhash.source.git.dirty"] == (str(commit.endswith("-dirty")).lower() if commit else "unknown")
    assert all({key: r.data.tags.get(key) for key in lineage} == lineage for r in runs), lineage
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}

    # The report's numbers are the MLflow metrics of the cells' runs.
    table = pq.read_table(tmp_path / "ablations" / "two-node" / "results.parquet").to_pylist()
    by_cell = {r.data.tags["corrhash.cell"]: r for r in runs}
    assert len(table) == 8
    for row in table:
        metrics = by_cell[row["cell"]].data.metrics
        assert row["test_precision"] == metrics["test_precision_at_20"]
        assert row["val_precision"] == metrics["best_val_precision_at_20"]
    report = (tmp_path / "ablations" / "two-node" / "report.md").read_text()
    assert "nash" in report and "corrsh" in report

    # The same name again: no cell starts, nothing new is recorded.
    again = submit(cluster, args, job="jobs/ablate.py")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "0 to run" in again.stdout + again.stderr
    assert sorted(r.info.run_id for r in cell_runs(client, "two-node")) == sorted(r.info.run_id for r in runs)


def test_dry_run_and_invalid_grid_start_nothing(shards_synthetic, tmp_path, capsys):
    from badinput import job

    grid = write_grid(tmp_path / "grid.yaml", shards_synthetic, epochs=2)
    assert job("ablate").main(["--grid", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 cells" in out and out.count("cpus=1") >= 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(grid.read_text().replace("nash: {}", "nosuchmethod: {}"))
    assert job("ablate").main(["--grid", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "nosuchmethod" in err and str(bad) in err
