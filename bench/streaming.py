"""Training on splits larger than memory: `python -m bench.run scale --sections stream`.

For each prepared corpus, one epoch of CorrSH (64 bits) and one per-epoch evaluation (a seeded sample of val
queries against the whole train split as database), each run in a fresh process so that its peak memory is
its own:
  held      --stream never: the train split loaded whole, as the fast path does
  streamed  --stream always: read from its shard files a buffer at a time (data/stream.py)
Then, where root may create a cgroup (v1 memory controller), both again under a memory limit halfway between
the two peaks: `never` must fail (the kernel's OOM killer), `auto` must see the limit, stream and finish.
The ratios (streamed against held) come from the same run; seconds are this machine's only.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import child_env

CGROUP_V1 = Path("/sys/fs/cgroup/memory")
EVAL_SAMPLE = 1000


def one_epoch(folder: str, mode: str, buffer_rows: int, seed: int = 0, bits: int = 64) -> dict:
    """What the child process measures: opening the splits, one epoch, one sampled evaluation, its peak RSS."""
    import torch

    from corrhash.data import TfidfShards
    from corrhash.data.stream import ShardStream, open_split, rows_of
    from corrhash.models import ModelConfig
    from corrhash.train import Evaluator, TrainConfig
    from corrhash.train.loop import new_state, run_epoch, selection_queries

    device = torch.device("cpu")
    config = TrainConfig(epochs=1, seed=seed, device="cpu", eval_queries=EVAL_SAMPLE, stream=mode,
                         stream_buffer=buffer_rows)
    started = time.perf_counter()
    shards = TfidfShards(folder)
    train = open_split(shards, "train", config.stream, config.stream_buffer)
    queries = selection_queries(open_split(shards, "val", config.stream, config.stream_buffer), config)
    state = new_state(ModelConfig(name="corrsh", bits=bits), config, shards.n_features, device)
    rows = rows_of(train, device)
    opened = time.perf_counter()
    terms = run_epoch(state.model, state, rows, config.batch_size, device)
    trained = time.perf_counter()
    Evaluator(train, queries, device, config.eval_k)(state.model)
    evaluated = time.perf_counter()
    streamed = isinstance(train, ShardStream)
    return {"mode": mode, "streamed": streamed, "train_docs": len(train), "open_s": opened - started,
            "epoch_s": trained - opened, "docs_per_s": terms["docs"] / (trained - opened),
            "eval_s": evaluated - trained, "eval_queries": len(queries),
            "most_rows_held": train.most_rows_held if streamed else len(train),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_child(folder: Path, mode: str, buffer_rows: int, seed: int, cgroup: Path | None) -> dict:
    command = [sys.executable, "-m", "bench.streaming", str(folder), mode, str(buffer_rows), str(seed)]
    if cgroup is not None:  # the shell joins the cgroup, then becomes the child: all its memory is charged there
        command = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *command]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=child_env())
    row = {"mode": mode, "limit_mib": None, "returncode": done.returncode, "wall_s": time.perf_counter() - started}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        row.update(json.loads(lines[-1]))
    else:
        row["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    return row


def _cgroup_usable() -> str | None:
    """Why no memory-limited runs can be made here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    if not os.access(CGROUP_V1, os.W_OK):
        return f"no writable cgroup v1 memory hierarchy at {CGROUP_V1}"
    return None


def run_stream_scale(folders: dict[int, Path], buffer_rows: int = 50_000, seed: int = 0, log=print) -> dict:
    """Rows for every corpus N (held and streamed), and the memory-limited pair for the largest."""
    rows = []
    for n, folder in sorted(folders.items()):
        for mode in ("never", "always"):
            row = {"n_docs": n, **_run_child(folder, mode, buffer_rows, seed, None)}
            rows.append(row)
            log(f"  stream {n:,} {mode}: " + (f"epoch {row['epoch_s']:.1f} s ({row['docs_per_s']:,.0f} docs/s), "
                                            f"eval {row['eval_s']:.1f} s, peak {row['peak_rss_mib']:,.0f} MiB"
                                            if "error" not in row else row["error"]))
    report = {"buffer_rows": buffer_rows, "rows": rows, "limited": [], "limited_skipped": _cgroup_usable()}
    largest = max(folders)
    held, streamed = ({r["mode"]: r for r in rows if r["n_docs"] == largest}.get(m) for m in ("never", "always"))
    if report["limited_skipped"] is None and held and streamed and "error" not in held and "error" not in streamed:
        limit_mib = int((held["peak_rss_mib"] + streamed["peak_rss_mib"]) / 2)
        if held["peak_rss_mib"] < 1.3 * streamed["peak_rss_mib"]:
            report["limited_skipped"] = "held and streamed peaks too close for a limit between them"
        else:
            for mode in ("never", "auto"):
                group = CGROUP_V1 / f"corrhash-bench-{uuid.uuid4().hex[:8]}"
                group.mkdir()
                try:
                    (group / "memory.limit_in_bytes").write_text(str(limit_mib << 20))
                    row = {"n_docs": largest, **_run_child(folders[largest], mode, buffer_rows, seed, group)}
                    row["limit_mib"] = limit_mib
                    row["oom_kills"] = _oom_kills(group)
                finally:
                    group.rmdir()
                report["limited"].append(row)
                log(f"  stream {largest:,} {mode} under {limit_mib:,} MiB: returncode {row['returncode']}, "
                    f"OOM kills {row['oom_kills']}, streamed {row.get('streamed')}")
    return report


def _oom_kills(group: Path) -> int | None:
    try:
        for line in (group / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def markdown_lines(report: dict) -> list[str]:
    lines = [f"Streaming buffer: {report['buffer_rows']:,} train rows. One epoch and one evaluation "
             f"({EVAL_SAMPLE:,} sampled val queries against the whole train split), each in a fresh process.", "",
             "| N | train docs | stream | open s | epoch s | docs/s | eval s | rows held at once | peak RSS MiB | "
             "epoch time vs held | peak RSS vs held |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_n: dict[int, dict] = {}
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['n_docs']:,} | | {r['mode']} | failed: {r['error']} | | | | | | | |")
            continue
        base = by_n.setdefault(r["n_docs"], r)
        lines.append(f"| {r['n_docs']:,} | {r['train_docs']:,} | {r['mode']} | {r['open_s']:.1f} | {r['epoch_s']:.1f} | "
                     f"{r['docs_per_s']:,.0f} | {r['eval_s']:.1f} | {r['most_rows_held']:,} | "
                     f"{r['peak_rss_mib']:,.0f} | {r['epoch_s'] / base['epoch_s']:.2f} | "
                     f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f} |")
    lines.append("")
    if report["limited"]:
        lines += ["Under a cgroup memory limit halfway between the two peaks:", "",
                  "| N | stream | limit MiB | exit status | OOM kills | streamed | epoch s | peak RSS MiB |",
                  "|---:|---|---:|---:|---:|---|---:|---:|"]
        for r in report["limited"]:
            lines.append(f"| {r['n_docs']:,} | {r['mode']} | {r['limit_mib']:,} | {r['returncode']} | "
                         f"{r['oom_kills']} | {r.get('streamed', '-')} | "
                         f"{r['epoch_s']:.1f} | {r['peak_rss_mib']:,.0f} |" if "error" not in r else
                         f"| {r['n_docs']:,} | {r['mode']} | {r['limit_mib']:,} | {r['returncode']} | "
                         f"{r['oom_kills']} | - | - | - |")
        lines.append("")
    elif report.get("limited_skipped"):
        lines += [f"No memory-limited runs: {report['limited_skipped']}.", ""]
    return lines


if __name__ == "__main__":
    folder, mode, buffer_rows, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(one_epoch(folder, mode, buffer_rows, seed)))
