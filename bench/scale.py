"""How each stage's cost grows with the corpus: `python -m bench.run scale`.

Sections, each a list of rows (one JSON file and one markdown table in the end):
  prepare  synthetic corpora of N documents (bench/synth.py) prepared in one process and as Ray tasks
           (bench/prepare_scale.py): seconds, docs/s, peak memory, same content hash
  train    on each single-process preparation: one epoch of CorrSH (64 bits) in this process, docs/s, and
           the per-epoch evaluation against the whole train split as database with every val document as a
           query and with a seeded sample (`eval_queries`)
  stream   on the same preparations: an epoch and an evaluation with the train split held whole and streamed
           from its shard files, each in a fresh process: seconds and peak memory; then both under a cgroup memory
           limit between the two peaks, where holding it must fail and `--stream auto` must finish
           (bench/streaming.py)
  search   flat vs sub-linear Hamming search over random and clustered 64-bit codes (bench/sublinear.py)
  serve    the Ray Serve app (jobs/serve.py) over the smallest corpus and its model, under a bounded loopback
           load test (bench/serve_load.py): q/s, p50/p99 latency, errors
Figures are ratios within this run (cost per document at N against the smallest N); absolute seconds are this
machine's only.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import REPO
from corrhash.data import TfidfShards
from corrhash.data.device_csr import place
from corrhash.models import ModelConfig
from corrhash.train import TrainConfig
from corrhash.train.evaluate import Evaluator
from corrhash.train.loop import new_state, run_epoch, selection_queries

EVAL_SAMPLE = 1000
EPOCH_REPEATS = 2


def train_row(folder: Path, n_docs: int, bits: int = 64, seed: int = 0, full_eval_max: int = 200_000,
              log=print) -> dict:
    """One epoch of CorrSH on `folder` in this process (all torch threads), and one evaluation each way; the
    evaluation with every val document as a query only up to `full_eval_max` train documents (its cost grows
    with val x train, the reason for the sample)."""
    shards = TfidfShards(folder)
    train, val = shards.split("train"), shards.split("val")
    device = torch.device("cpu")
    config = TrainConfig(epochs=1, seed=seed, device="cpu", eval_queries=EVAL_SAMPLE)
    state = new_state(ModelConfig(name="corrsh", bits=bits), config, shards.n_features, device)
    rows = place(train, device)
    epoch_s = math.inf
    for _ in range(EPOCH_REPEATS):  # the best of a few: another process on this machine only ever slows one down
        started = time.perf_counter()
        terms = run_epoch(state.model, state, rows, config.batch_size, device)
        epoch_s = min(epoch_s, time.perf_counter() - started)
    row = {"n_docs": n_docs, "train_docs": len(train), "val_docs": len(val), "n_features": shards.n_features,
           "bits": bits, "batch_size": config.batch_size, "threads": torch.get_num_threads(),
           "epoch_s": epoch_s, "epoch_timing": f"best of {EPOCH_REPEATS}", "train_docs_per_s": terms["docs"] / epoch_s}
    for name, queries in (("eval_all", val), ("eval_sample", selection_queries(val, config))):
        if name == "eval_all" and len(train) > full_eval_max:
            row[f"{name}_s"], row[f"{name}_queries"] = None, len(queries)
            continue
        evaluator = Evaluator(train, queries, device, config.eval_k)
        started = time.perf_counter()
        evaluator(state.model)
        row[f"{name}_s"] = time.perf_counter() - started
        row[f"{name}_queries"] = len(queries)
    log(f"  train {n_docs:,}: epoch {epoch_s:.1f} s ({row['train_docs_per_s']:,.0f} docs/s), evaluation "
        f"{_seconds(row['eval_all_s'])} with {len(val):,} queries, {_seconds(row['eval_sample_s'])} with "
        f"{row['eval_sample_queries']:,}")
    return row


def _seconds(value: float | None) -> str:
    return "not run" if value is None else f"{value:.1f} s"


def serve_row(folder: Path, texts: list[str], workdir: Path, requests: int = 2000, concurrency: int = 8,
              duration_s: float = 120.0, log=print) -> dict:
    """Train a small model on `folder` (jobs/train.py --local), serve it over the train split with jobs/serve.py
    on an embedded local Ray, and run the bounded load test against POST /search with `texts` as queries."""
    from bench.serve_load import run_load_test

    model_run = workdir / "serve-model"
    subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), "--local", "--data", str(folder), "--out",
                    str(model_run), "--bits", "64", "--epochs", "2", "--skip-test"], check=True,
                   stdout=subprocess.DEVNULL)
    port = _free_port()
    log_path = workdir / "serve.log"
    server = subprocess.Popen([sys.executable, str(REPO / "jobs" / "serve.py"), "--model", str(model_run / "model"),
                               "--corpus", str(folder), "--port", str(port), "--replicas", "2"],
                              stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        health = _wait_healthy(f"http://127.0.0.1:{port}/healthz", server, log_path, timeout_s=300)
        result = run_load_test(f"http://127.0.0.1:{port}/search", texts, requests, concurrency, duration_s, k=100)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    row = {"documents": health.get("documents"), "replicas": 2, "k": 100, **result}
    log(f"  serve: {row['queries_per_s']:,.0f} q/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
        f"{row['errors']} errors ({row['ok']} of {row['requests']} requests)")
    return row


def _wait_healthy(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float) -> dict:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jobs/serve.py exited with {server.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout_s:.0f} s; see {log_path}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def per_document_ratios(rows: list[dict], key: str, seconds: str, mode: str | None = None) -> None:
    """Adds `cost_per_doc_vs_smallest`: (seconds / N) at this N over the same at the smallest N."""
    chosen = [r for r in rows if mode is None or r.get("mode") == mode]
    if not chosen:
        return
    smallest = min(chosen, key=lambda r: r[key])
    base = smallest[seconds] / smallest[key]
    for row in chosen:
        row["cost_per_doc_vs_smallest"] = (row[seconds] / row[key]) / base


def markdown(report: dict) -> str:
    lines = [f"# corrhash at scale ({report['host']}, {report['cpus']} CPUs, torch {report['torch']})", "",
             f"Command: `{report['command']}`", ""]
    if report.get("prepare"):
        lines += ["## Preparation (bench/synth.py corpus, prepare_data.py text; one process vs Ray tasks)", "",
                  "| N | mode | files | raw MiB | prepare s | docs/s | cost/doc vs smallest N | peak tree PSS MiB | "
                  "same content hash |", "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in report["prepare"]:
            lines.append(f"| {r['n_docs']:,} | {r['mode']} | {r['files']} | {r['raw_mib']} | "
                         f"{r['seconds']:.1f} | {r['docs_per_s']:,.0f} | "
                         f"{r.get('cost_per_doc_vs_smallest', float('nan')):.2f} | {r['peak_tree_pss_mib']:,.0f} | "
                         f"{r.get('same_as_single', '-')} |")
        lines.append("")
    if report.get("train"):
        lines += ["## Training and per-epoch evaluation (CorrSH 64 bits, an epoch's time best of 2, this process)", "",
                  "| N | train docs | features | epoch s | docs/s | cost/doc vs smallest N | eval, all val (queries) | "
                  "eval, sample (queries) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in report["train"]:
            lines.append(f"| {r['n_docs']:,} | {r['train_docs']:,} | {r['n_features']:,} | {r['epoch_s']:.1f} | "
                         f"{r['train_docs_per_s']:,.0f} | {r['cost_per_doc_vs_smallest']:.2f} | "
                         f"{_seconds(r['eval_all_s'])} ({r['eval_all_queries']:,}) | "
                         f"{_seconds(r['eval_sample_s'])} ({r['eval_sample_queries']:,}) |")
        lines.append("")
    if report.get("stream"):
        from bench.streaming import markdown_lines

        lines += ["## Training from shards larger than memory (held whole vs streamed, CorrSH 64 bits)", "",
                  *markdown_lines(report["stream"])]
    if report.get("search"):
        from bench.sublinear import markdown_lines

        lines += ["## Search (64-bit codes)", "", *markdown_lines(report["search"])]
    if report.get("serve"):
        r = report["serve"]
        lines += ["## Serving (jobs/serve.py, 2 replicas, loopback, bounded load test)", "",
                  "| documents | requests | concurrency | stopped by | q/s | p50 ms | p99 ms | max ms | errors |",
                  "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
                  f"| {r['documents']:,} | {r['requests']} | {r['concurrency']} | {r['stopped_by']} | "
                  f"{r['queries_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                  f"{r['errors']} |", ""]
    for section, error in report.get("errors", {}).items():
        lines += [f"**{section} failed:** {error}", ""]
    return "\n".join(lines)


def write(report: dict, out: Path, name: str) -> None:
    from corrhash.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / f"{name}.md", markdown(report))
