"""Preparation cost as the corpus grows: for each size, a synthetic text corpus (bench/synth.py, several files)
prepared by `jobs/prepare_data.py text` in one process and with `--ray` (Ray tasks on an embedded local
Ray), each run as its own subprocess so that its time and memory are its own.

Measured per run: wall time of the command (Python start-up, and for --ray the start of a local Ray, included),
the preparation time the job reports ("done in"), documents per second of that time, and the peak memory of the
process tree, sampled from /proc every `SAMPLE_S`: the sum over the tree of each process's proportional set size
(PSS: shared pages, such as Ray's object store or a library mapped by every worker, are split among the
processes that map them instead of counted once per process), and the largest single process's RSS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import REPO, child_env
SAMPLE_S = 0.25
DONE = re.compile(r"done in ([0-9.]+)s")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) once it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class TreeMemory:
    """Samples the memory of a process and all its descendants until stopped; keeps the peaks (MiB)."""

    def __init__(self, pid: int):
        self.pid, self.peak_pss_mib, self.peak_process_rss_mib = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            tree, pids, total, largest = _children(), [self.pid], 0, 0
            while pids:
                pid = pids.pop()
                pss, rss = _memory_kib(pid)
                total, largest = total + pss, max(largest, rss)
                pids.extend(tree.get(pid, []))
            self.peak_pss_mib = max(self.peak_pss_mib, total / 1024)
            self.peak_process_rss_mib = max(self.peak_process_rss_mib, largest / 1024)
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measured(command: list[str], timeout: float | None) -> tuple[float, TreeMemory, str]:
    """(wall seconds, memory peaks, output: stdout and stderr interleaved) of a command run to completion;
    RuntimeError if it fails."""
    env = child_env(OMP_NUM_THREADS="1")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    with TreeMemory(process.pid) as memory:
        output, _ = process.communicate(timeout=timeout)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return wall, memory, output


def run_generate(out: Path, n_docs: int, seed: int, files: int, timeout: float | None = None) -> dict:
    """`python -m bench.synth` as a subprocess: the corpus's files, size, generation time and peak memory."""
    command = [sys.executable, "-m", "bench.synth", "--out", str(out), "--n-docs", str(n_docs),
               "--seed", str(seed), "--files", str(files), "--overwrite"]
    wall, memory, _ = measured(command, timeout)
    paths = sorted(out.glob("part-*"))
    return {"files": len(paths), "raw_mib": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
            "generate_s": round(wall, 2), "generate_peak_rss_mib": round(memory.peak_process_rss_mib, 1)}


def run_prepare(raw: Path, out: Path, ray: bool, timeout: float | None = None) -> dict:
    """One `prepare_data.py text` run as a subprocess: times, peak memory and the manifest's content hash."""
    command = [sys.executable, str(REPO / "jobs" / "prepare_data.py"), "text", "--raw", str(raw), "--out", str(out),
               "--overwrite", *(["--ray"] if ray else [])]
    wall, memory, stderr = measured(command, timeout)
    done = DONE.findall(stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall_s": round(wall, 2), "prepare_s": float(done[-1]) if done else None,
            "peak_tree_pss_mib": round(memory.peak_pss_mib, 1),
            "peak_process_rss_mib": round(memory.peak_process_rss_mib, 1),
            "documents_out": sum(split["documents"] for split in manifest["splits"].values()),
            "n_features": manifest["n_features"], "content_hash": manifest["content_hash"]}


def run_prepare_scale(sizes: list[int], workdir: Path, seed: int = 0, files: int = 8, ray: bool = True,
                      timeout: float | None = None) -> list[dict]:
    """For each size N: generate N documents in `files` JSONL files under `workdir` (bench/synth.py), prepare them in
    one process and (with `ray`) as Ray tasks; one row per (N, mode): n_docs, mode, files, raw_mib, generate_s,
    generate_peak_rss_mib, wall_s, prepare_s, docs_per_s (N / prepare_s), peak_tree_pss_mib, peak_process_rss_mib,
    content_hash and same_as_single (the Ray run's content hash is the single-process one)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_docs in sizes:
        raw = workdir / f"synth-{n_docs}"
        common = {"n_docs": n_docs, **run_generate(raw, n_docs, seed, min(files, n_docs), timeout)}
        single = None
        for mode in ("single", "ray") if ray else ("single",):
            result = run_prepare(raw, workdir / f"prepared-{n_docs}-{mode}", mode == "ray", timeout)
            seconds = result["prepare_s"] or result["wall_s"]
            row = {**common, "mode": mode, **result, "docs_per_s": round(n_docs / seconds, 1)}
            if mode == "single":
                single = result["content_hash"]
            else:
                row["same_as_single"] = result["content_hash"] == single
            rows.append(row)
    return rows
