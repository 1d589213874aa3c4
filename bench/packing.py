"""Several small trainings at once on one device: the Tune packing case (--gpus-per-trial 0.25).

Each trial is its own process (as Ray runs trials), training CorrSH with the shared loop. All
processes load and warm up first, then start together on one signal; aggregate throughput is every
process's documents over the wall time from that signal to the last one done.

Worker protocol (stdin/stdout, one line each): the worker prints "ready", waits for a line, trains,
prints its JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import child_env


def run_worker(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--bits", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)

    import torch

    from corrhash.data import TfidfShards
    from corrhash.models import ModelConfig
    from corrhash.train import TrainConfig, new_state
    from corrhash.data.device_csr import place
    from corrhash.train.loop import run_epoch, train_epochs

    torch.set_num_threads(args.threads)  # trials share the host's cores, as Tune gives each a share
    device = torch.device(args.device)
    shards = TfidfShards(args.data)
    train = shards.split("train")
    state = new_state(ModelConfig(name="corrsh", bits=args.bits),
                      TrainConfig(batch_size=args.batch_size, seed=args.seed, device=args.device),
                      shards.n_features, device)
    rows = place(train, device)
    run_epoch(state.model, state, rows, args.batch_size, device, batches=3)  # warm-up
    print("ready", flush=True)
    sys.stdin.readline()
    epochs = list(train_epochs(state.model, state, rows, args.batch_size, device, args.epochs))
    print(json.dumps({"docs": sum(m["docs"] for m in epochs), "seconds": sum(m["seconds"] for m in epochs)}),
          flush=True)
    return 0


def _start(n: int, index: int, data: Path, device: str, epochs: int, batch_size: int, bits: int,
           seed: int) -> subprocess.Popen:
    threads = max(1, (os.cpu_count() or 1) // n)
    command = [sys.executable, "-m", "bench.packing", "--data", str(data), "--device", device,
               "--epochs", str(epochs), "--batch-size", str(batch_size), "--bits", str(bits),
               "--seed", str(seed + index), "--threads", str(threads)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())


def _line(process: subprocess.Popen, index: int) -> str:
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"packing worker {index} exited with status {process.wait()} (its stderr is above)")
    return line


def packed_throughput(data: Path, process_counts: list[int], device: str, epochs: int, batch_size: int,
                      bits: int, seed: int, log=print) -> list[dict]:
    """One row per process count: aggregate docs/s, and its ratio to the fewest processes in this run."""
    rows = []
    for n in sorted(process_counts):
        processes = [_start(n, i, data, device, epochs, batch_size, bits, seed) for i in range(n)]
        try:
            for i, process in enumerate(processes):
                _line(process, i)  # "ready"
            start = time.perf_counter()
            for process in processes:
                process.stdin.write("go\n")
                process.stdin.flush()
            results = [json.loads(_line(process, i)) for i, process in enumerate(processes)]
            wall = time.perf_counter() - start
        except BaseException:
            for process in processes:
                process.kill()
            raise
        for process in processes:
            process.wait(timeout=60)
        docs = sum(r["docs"] for r in results)
        rows.append({"processes": n, "epochs_each": epochs, "batch_size": batch_size, "docs": docs, "wall_s": wall,
                     "aggregate_docs_per_s": docs / wall,
                     "per_process_docs_per_s": sum(r["docs"] / r["seconds"] for r in results) / n})
        log(f"  packing {n} process(es): {docs / wall:,.0f} docs/s together")
    for row in rows:
        row["vs_fewest"] = row["aggregate_docs_per_s"] / rows[0]["aggregate_docs_per_s"]
    return rows


if __name__ == "__main__":
    sys.exit(run_worker())
