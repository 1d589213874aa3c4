"""dashboards/: the committed Grafana JSON is what dashboards/generate.py writes and is well formed, and, against
a real Prometheus scraping the test Ray head with the shipped scrape config, every query of every shipped panel
returns plausible series after a training job, a 2-trial tune, a 2-cell ablation and a search ran on that head.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services import BIN, auth_header, start_prometheus, stop, submit

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "dashboards"
SHIPPED_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
PROMETHEUS_REF = {"type": "prometheus", "uid": "${datasource}"}
"""A datasource reference as Grafana exports it at schemaVersion >= 33: the `datasource` variable's uid."""


def generator():
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def shipped() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted((DASHBOARDS / "grafana").glob("*.json"))}


def panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def test_committed_dashboards_are_what_the_generator_writes():
    rendered = generator().render()
    assert sorted(rendered) == sorted(shipped()), "run `python dashboards/generate.py` and commit its output"
    for name, text in rendered.items():
        assert (DASHBOARDS / "grafana" / name).read_text() == text, f"{name} is stale: run dashboards/generate.py"


def test_every_panel_has_a_datasource_a_query_and_a_unit():
    """Well formed, and every datasource (panel, target, query variable) is the object reference Grafana expects at
    the declared schemaVersion."""
    boards = shipped()
    assert len(boards) == 2
    for name, board in boards.items():
        assert {"title", "uid", "panels", "templating", "schemaVersion"} <= board.keys(), name
        # From schemaVersion 33 Grafana expects {"type", "uid"} datasource references and migrates the older
        # string form ("${datasource}") only in dashboards declaring an older version (review F10).
        assert board["schemaVersion"] >= 33, f"{name}: schemaVersion {board['schemaVersion']}"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"] == PROMETHEUS_REF, f"{name}: variable {variable['name']}"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        assert panels(board), name
        for panel in panels(board):
            where = f"{name}: panel {panel['title']!r}"
            assert panel["datasource"] == PROMETHEUS_REF, f"{where}: datasource {panel['datasource']!r}"
            for target in panel["targets"]:
                assert target["datasource"] == PROMETHEUS_REF, f"{where} [{target['refId']}]: {target['datasource']!r}"
            assert panel["fieldConfig"]["defaults"]["unit"], where
            assert panel["description"], where
            assert panel["targets"] and all(t["expr"].strip() and t["refId"] for t in panel["targets"]), where
            for target in panel["targets"]:
                used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__range"}
                assert used <= variables.keys(), f"{where}: undefined variables {used - variables.keys()}"
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, where


def test_prometheus_config_reads_rays_service_discovery_file():
    config = (DASHBOARDS / "prometheus" / "prometheus.yml").read_text()
    assert SHIPPED_SD_FILE in config
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed: .ci/run installs it")
    done = subprocess.run([promtool, "check", "config", str(DASHBOARDS / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- against a real Prometheus ------------------------------------------------------------------------------

def _between(low: float, high: float):
    return lambda value: low <= value <= high


# What each panel's values may be (every non-NaN point of every series); a new panel needs an entry.
PLAUSIBLE = {
    "Throughput per worker": lambda v: v > 0,
    "Throughput per job": lambda v: v >= 0,
    "Epoch time": lambda v: 0 < v < 60,
    "Epochs completed": lambda v: v >= 1 and v == int(v),
    "Loss terms": math.isfinite,
    "KL weight": _between(0, 1),
    "Validation precision@k": _between(0, 1),
    "Best validation precision@k so far": _between(0, 1),
    "Tune trials by state": lambda v: 0 <= v <= 2 and v == int(v),
    "Ablation cells by state": lambda v: 0 <= v <= 2 and v == int(v),
    "Node CPU": _between(0, 100),
    "Node memory used": lambda v: v > 0,
    "Logical CPUs and GPUs in use": lambda v: v >= 0,
    "Object store memory": lambda v: v >= 0,
    "GPU utilisation": _between(0, 100),
    "GPU memory used": lambda v: v >= 0,
    "Queries per second": lambda v: v >= 0,
    "Latency quantiles": lambda v: 0 < v < 60,
    "Mean latency": lambda v: 0 < v < 60,
    "Queries answered": lambda v: v >= 0,
}
# Series a panel must show at least once with a value above zero (a live job, not just zeros).
POSITIVE = {"Throughput per job", "Queries per second", "Queries answered", "Logical CPUs and GPUs in use"}
# Every worker, trial and cell must train through a few of Ray's 10 s exports, so that its gauges reach Prometheus.
# At batch 4 (measured on a busy 2-core machine): an ablation cell trains an epoch in ~0.7 s (40 epochs: ~27 s), a Tune
# trial in ~1.1 s (28 epochs: ~30 s), a Ray Train worker (2 of them, batch 2 each, an allreduce per step and a
# checkpoint per epoch) in ~1.9 s (15 epochs: ~28 s). The tune ends first of the three: the search, which needs its
# model, then streams while the Train run (the slowest to start) is still training.
EPOCHS = 40
TUNE_EPOCHS = 28
TRAIN_EPOCHS = 15


def grafana_to_promql(expr: str, window_s: int) -> str:
    """The query Grafana sends with every variable on `All` ($__rate_interval: 4 scrapes of 10 s, Grafana's rule)."""
    expr = expr.replace("$__rate_interval", "40s").replace("$__range", f"{window_s}s")
    return re.sub(r"\$\w+", ".+", expr)


def query_range(url: str, expr: str, start: float, end: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 5})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def write_grid(path: Path, data: Path) -> Path:
    path.write_text(f"""name: metrics-grid
data:
  synthetic: {data}
methods:
  corrsh: {{rank: 2, mixture: 2}}
bits: [8, 16]
seeds: [0]
fixed: {{epochs: {EPOCHS}, patience: {EPOCHS}, hidden: 32, batch_size: 4, eval_k: 20}}
resources: {{cpus: 0.25, gpus: 0}}
""")
    return path


@pytest.fixture
def prometheus(cluster, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus (Debian package) is not installed: .ci/run installs it with apt-get")
    shipped_config = (DASHBOARDS / "prometheus" / "prometheus.yml").read_text()
    # The one line dashboards/prometheus/prometheus.yml says to change for a head with its own --temp-dir.
    config = tmp_path / "prometheus.yml"
    config.write_text(shipped_config.replace(SHIPPED_SD_FILE,
                                             str(cluster["head"].temp / "prom_metrics_service_discovery.json")))
    process, url = start_prometheus(tmp_path, config)
    yield url
    stop(process)


def submit_all(cluster, jobs: dict[str, list[str]]) -> dict[str, str]:
    """`ray job submit --no-wait` of every job at once (each submit is seconds of CLI start-up and upload);
    returns their submission ids."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        submitted = dict(zip(jobs, pool.map(lambda job: submit(cluster, jobs[job], job=job, wait=False), jobs)))
    job_ids = {}
    for job, done in submitted.items():
        assert done.returncode == 0, done.stdout + done.stderr
        job_ids[job] = re.search(r"raysubmit_\w+", done.stdout + done.stderr).group(0)
    return job_ids


def wait_for_jobs(cluster, job_ids: dict[str, str], timeout: float = 600) -> None:
    """Poll the head's job API until every submitted job ends; each must have SUCCEEDED (else its logs say why)."""
    deadline, pending = time.monotonic() + timeout, dict(job_ids)
    while pending:
        assert time.monotonic() < deadline, f"jobs still running after {timeout} s: {sorted(pending)}"
        for job, job_id in list(pending.items()):
            request = urllib.request.Request(f"{cluster['head'].dashboard}/api/jobs/{job_id}",
                                             headers=auth_header(cluster["head"].token_path))
            with urllib.request.urlopen(request, timeout=10) as response:
                info = json.loads(response.read())
            if info["status"] in ("FAILED", "STOPPED"):
                logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", cluster["head"].dashboard, job_id],
                                      env=cluster["head"].client_env(), capture_output=True, text=True).stdout
                pytest.fail(f"{job}: {info['status']}\n{logs[-4000:]}")
            if info["status"] == "SUCCEEDED":
                del pending[job]
        time.sleep(2)


def stream_queries(cluster, model: Path, corpus: Path, batches: int, size: int) -> list[dict]:
    """A search driver connected to the test cluster, fed `batches` batches of queries on stdin, each sent
    one second after the previous one was answered, as a client streaming queries would; returns its answers.
    Paced on the answers, not on the clock: a driver slow to start on a busy machine would otherwise find every
    batch waiting in the pipe and answer them all between two metric exports, and Prometheus would see the
    counter only at its final value (a rate of zero). No --linger-s: counters and histograms stay in the
    node's metrics agent after the process ends (only gauges expire)."""
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: stderr is read only if something went wrong
    process = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "search.py"), "--model", str(model), "--corpus", str(corpus), "--k", "10",
         "--queries", "-", "--batch", str(size), "--address", cluster["head"].gcs],
        env=cluster["head"].client_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)

    def errors() -> str:
        log.seek(0)
        return log.read()[-3000:]

    watchdog = threading.Timer(batches * 5 + 120, process.kill)  # a hung driver fails the test instead of CI
    watchdog.start()
    answers = []
    for b in range(batches):
        process.stdin.write("".join(f"t{i % 8}w{i % 30} t{(i + 3) % 8}w{i % 7} common{i % 60}\n"
                                    for i in range(b * size, (b + 1) * size)))
        process.stdin.flush()
        for _ in range(size):
            line = process.stdout.readline()
            assert line, f"search ended before answering batch {b}: {errors()}"
            answers.append(json.loads(line))
        time.sleep(1)
    out, _ = process.communicate(timeout=120)
    watchdog.cancel()
    assert process.returncode == 0, errors()
    return answers + [json.loads(line) for line in out.splitlines()]


def what_the_jobs_did(prometheus: str, started: float) -> list[str]:
    """What the series must say the jobs did, as the expectations not (yet) met: 2 trials and 2 cells in the
    end, every worker, trial and cell and every rank of the Train run reported, all 2000 queries counted."""
    def last_by(expr: str, label: str) -> dict:
        result = query_range(prometheus, expr, started, time.time())
        return {s["metric"].get(label, ""): float(s["values"][-1][1]) for s in result}

    unmet = []
    trials = last_by('sum by (state) (last_over_time(ray_corrhash_tune_trials{job_name="metrics-tune"}[10m]))', "state")
    if not (sum(trials.values()) == 2 and trials.get("finished", 0) + trials.get("stopped_early", 0) == 2):
        unmet.append(f"tune trials by state: {trials}")
    cells = last_by('sum by (state) (last_over_time(ray_corrhash_ablation_cells{job_name="metrics-grid"}[10m]))',
                    "state")
    if not (cells.get("done") == 2 and sum(cells.values()) == 2):
        unmet.append(f"ablation cells by state: {cells}")
    # Every worker, trial and cell labels its epochs with its job's name and its own run.
    for job_name, runs in (("metrics-train", 1), ("metrics-tune", 2), ("metrics-grid", 2)):
        epochs = last_by(f'max by (run) (max_over_time(ray_corrhash_train_epoch{{job_name="{job_name}"}}[10m]))',
                         "run")
        if not (len(epochs) == runs and min(epochs.values()) >= 1):
            unmet.append(f"{job_name}: epochs by run {epochs}, {runs} run(s) expected")
    ranks = last_by('max by (rank) (max_over_time(ray_corrhash_train_epoch{job_name="metrics-train"}[10m]))', "rank")
    if sorted(ranks) != ["0", "1"]:
        unmet.append(f"metrics-train: epochs by rank {ranks}")
    answered = last_by('sum(max_over_time(ray_corrhash_search_queries_total[10m]))', "")
    if answered.get("") != 2000:
        unmet.append(f"search queries answered: {answered}")
    return unmet


@pytest.mark.cluster
def test_every_panel_query_returns_plausible_series(cluster, prometheus, shards_synthetic, tmp_path):
    started = time.time()
    # The three jobs at once, a quarter CPU per worker, trial and cell: their start-up overlaps, and the
    # dashboards see concurrent jobs as on a shared cluster.
    small = ["--bits", "16", "--hidden", "32", "--batch-size", "4", "--eval-k", "20", "--patience", str(EPOCHS)]
    # (patience >= epochs, and a grace period of every epoch: no run is stopped early)
    jobs = {
        "jobs/train.py": ["--data", str(shards_synthetic), *small, "--epochs", str(TRAIN_EPOCHS),
                          "--name", "metrics-train", "--storage", str(tmp_path / "train"), "--num-workers", "2",
                          "--cpus-per-worker", "0.25"],
        "jobs/tune.py": ["--data", str(shards_synthetic), *small, "--epochs", str(TUNE_EPOCHS),
                         "--name", "metrics-tune", "--num-samples", "2", "--max-concurrent", "2",
                         "--grace-period", str(TUNE_EPOCHS), "--cpus-per-trial", "0.25",
                         "--storage", str(tmp_path / "tune"), "--out", str(tmp_path / "best")],
        "jobs/ablate.py": ["--grid", str(write_grid(tmp_path / "grid.yaml", shards_synthetic)),
                           "--out", str(tmp_path / "ablations")],
    }
    job_ids = submit_all(cluster, jobs)
    # The search needs the tune's best model only: it streams while the other jobs may still be training.
    wait_for_jobs(cluster, {"jobs/tune.py": job_ids.pop("jobs/tune.py")})
    answers = stream_queries(cluster, tmp_path / "best" / "model", shards_synthetic, batches=20, size=100)
    assert [a["query"] for a in answers] == list(range(2000)) and all(len(a["hits"]) == 10 for a in answers)
    wait_for_jobs(cluster, job_ids)

    gpus = query_range(prometheus, 'sum(ray_resources{Name="GPU", State=~".+"})', started, time.time())
    has_gpu = any(float(v) > 0 for series in gpus for _, v in series["values"])
    checked, deadline = {}, time.monotonic() + 60
    while True:  # the last job's final values reach Prometheus within one export and one scrape
        end = time.time()
        problems = what_the_jobs_did(prometheus, started)
        for name, board in shipped().items():
            for panel in panels(board):
                title = panel["title"]
                assert title in PLAUSIBLE, f"{name}: panel {title!r} has no plausibility check in this test"
                gpu_only = "Needs a GPU node" in panel["description"]
                for target in panel["targets"]:
                    expr = grafana_to_promql(target["expr"], int(end - started) + 60)
                    series = query_range(prometheus, expr, started, end)
                    values = [float(v) for s in series for _, v in s["values"] if v != "NaN"]
                    if gpu_only and not has_gpu:
                        assert not values, f"{title}: GPU series on a cluster without GPUs: {series[:2]}"
                        print(f"{name}: {title!r} not checked: the test cluster has no GPU")
                        continue
                    if not values:
                        problems.append(f"{name}: {title!r}: no series for {expr}")
                        continue
                    bad = [v for v in values if not PLAUSIBLE[title](v)]
                    assert not bad, f"{name}: {title!r}: implausible values {bad[:5]} from {expr}"
                    if title in POSITIVE and not any(v > 0 for v in values):
                        problems.append(f"{name}: {title!r}: only zeros from {expr}")
                        continue
                    checked[(title, target["refId"])] = (len(series), min(values), max(values))
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not problems, "\n".join(problems)
    print(json.dumps({f"{t} [{r}]": v for (t, r), v in sorted(checked.items())}, indent=1))
