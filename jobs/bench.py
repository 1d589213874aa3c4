"""Benchmark our epoch loop and Hamming search against the authors' published mechanics.

Prints two tables and writes them as JSON. Every ratio compares two measurements from this run,
on this machine; absolute seconds are only meaningful on a dedicated GPU.

  1. One training epoch (and one validation evaluation) of CorrSH: our loop (split resident on
     the device, batches gathered there, device-side random numbers, fused Adam, faiss/torch
     top-k) vs the reference loop (dense rows through a per-item DataLoader, host random numbers,
     a host→device copy per batch, XOR-and-sort evaluation over 100-code blocks).
  2. Hamming top-100 over random codes: faiss (CPU path), torch matmul top-k (GPU path) and the
     XOR-and-sort loop, in queries/s and code pairs/s.

Example: python jobs/bench.py --data data/20ng --json results/bench-cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

import numpy as np  # noqa: E402
import torch  # noqa: E402

from corrhash.bench.reference import (reference_codes, reference_epoch, reference_loader,  # noqa: E402
                                      reference_precision, reference_topk)
from corrhash.data import TfidfShards  # noqa: E402
from corrhash.models import ModelConfig, create_model  # noqa: E402
from corrhash.retrieval import hamming_topk, pack_codes  # noqa: E402
from corrhash.train import Evaluator, TrainConfig, new_state, resolve_device  # noqa: E402
from corrhash.train.loop import place, run_epoch  # noqa: E402


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, value


def bench_epochs(data: Path, batch_sizes: list[int], bits: int, device: torch.device, seed: int) -> list[dict]:
    shards = TfidfShards(data)
    train, val = shards.split("train"), shards.split("val")
    model_config = ModelConfig(name="corrsh", bits=bits)
    rows = []
    for batch_size in batch_sizes:
        config = TrainConfig(batch_size=batch_size, seed=seed, device=str(device))
        state = new_state(model_config, config, shards.n_features, device)
        resident = place(train, device)
        run_epoch(state.model, state, resident, batch_size, device, batches=3)  # warm-up
        ours, _ = timed(lambda: run_epoch(state.model, state, resident, batch_size, device), device)
        evaluator = Evaluator(train, val, device)
        evaluator(state.model)  # warm-up (faiss/torch kernels, allocator)
        ours_eval, precision = timed(lambda: evaluator(state.model), device)

        torch.manual_seed(seed)
        model = create_model(model_config, shards.n_features).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10_000, 0.96)
        loader = reference_loader(train.features, batch_size, shuffle=True, seed=seed)
        warm = reference_loader(train.features[: 3 * batch_size], batch_size, shuffle=True, seed=seed)
        reference_epoch(model, optimizer, scheduler, warm, device)
        reference, _ = timed(functools.partial(reference_epoch, model, optimizer, scheduler, loader, device), device)

        def reference_evaluation():
            db = reference_codes(model, reference_loader(train.features, 100, shuffle=False), device)
            queries = reference_codes(model, reference_loader(val.features, 100, shuffle=False), device)
            return reference_precision(reference_topk(queries, db, 100), val.labels, train.labels)

        reference_eval, _ = timed(reference_evaluation, device)
        rows.append({"batch_size": batch_size, "docs": len(train), "ours_epoch_s": ours, "reference_epoch_s": reference,
                     "epoch_speedup": reference / ours, "ours_eval_s": ours_eval, "reference_eval_s": reference_eval,
                     "eval_speedup": reference_eval / ours_eval, "val_precision_after_epoch": precision.tie_aware})
        print(f"  batch {batch_size}: ours {ours:.2f}s, reference {reference:.2f}s", file=sys.stderr, flush=True)
        del loader, warm
    return rows


def bench_search(db_sizes: list[int], bit_lengths: list[int], queries: int, reference_queries: int,
                 device: torch.device, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for bits in bit_lengths:
        for n in db_sizes:
            db_bits = rng.integers(0, 2, size=(n, bits), dtype=np.uint8).astype(bool)
            q_bits = rng.integers(0, 2, size=(queries, bits), dtype=np.uint8).astype(bool)
            db, q = pack_codes(db_bits), pack_codes(q_bits)
            row = {"bits": bits, "database": n, "queries": queries}
            backends = [("faiss", "faiss")] + ([("torch", "torch")])
            for label, backend in backends:
                hamming_topk(q[:8], db, 100, backend=backend)  # warm-up
                seconds, _ = timed(lambda: hamming_topk(q, db, 100, backend=backend), device)
                row[f"{label}_s"] = seconds
                row[f"{label}_queries_per_s"] = queries / seconds
                row[f"{label}_pairs_per_s"] = queries * n / seconds
            db_t = torch.from_numpy(db_bits.astype(np.uint8)).to(device)
            q_t = torch.from_numpy(q_bits[:reference_queries].astype(np.uint8)).to(device)
            seconds, _ = timed(lambda: reference_topk(q_t, db_t, 100), device)
            row.update(reference_queries=reference_queries, reference_s=seconds,
                       reference_queries_per_s=reference_queries / seconds,
                       reference_pairs_per_s=reference_queries * n / seconds)
            row["faiss_vs_reference"] = row["faiss_queries_per_s"] / row["reference_queries_per_s"]
            row["torch_vs_reference"] = row["torch_queries_per_s"] / row["reference_queries_per_s"]
            rows.append(row)
            print(f"  search {bits} bits x {n}: done", file=sys.stderr, flush=True)
    return rows


def print_tables(epochs: list[dict], search: list[dict], device: str) -> None:
    print(f"\nTraining epoch and validation evaluation, CorrSH, on {device} (ratio = reference / ours)")
    print("| batch | docs | ours epoch s | reference epoch s | speed-up | ours eval s | reference eval s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in epochs:
        print(f"| {r['batch_size']} | {r['docs']} | {r['ours_epoch_s']:.2f} | {r['reference_epoch_s']:.2f} | "
              f"{r['epoch_speedup']:.1f}x | {r['ours_eval_s']:.2f} | {r['reference_eval_s']:.2f} | "
              f"{r['eval_speedup']:.1f}x |")
    print(f"\nHamming top-100 over random codes on {device} (queries/s; pairs/s = queries x database / s)")
    print("| bits | database | faiss q/s | torch q/s | reference q/s | faiss pairs/s | torch pairs/s | "
          "reference pairs/s | faiss / ref | torch / ref |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in search:
        print(f"| {r['bits']} | {r['database']:,} | {r['faiss_queries_per_s']:,.0f} | {r['torch_queries_per_s']:,.0f} | "
              f"{r['reference_queries_per_s']:,.1f} | {r['faiss_pairs_per_s']:.2e} | {r['torch_pairs_per_s']:.2e} | "
              f"{r['reference_pairs_per_s']:.2e} | {r['faiss_vs_reference']:.0f}x | {r['torch_vs_reference']:.0f}x |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared shards (e.g. data/20ng)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--bits", type=int, default=64, help="code length of the trained model")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 500], help="training batch sizes")
    parser.add_argument("--db-sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="search database sizes")
    parser.add_argument("--search-bits", type=int, nargs="+", default=[64, 128], help="search code lengths")
    parser.add_argument("--queries", type=int, default=1000, help="queries for faiss and torch search")
    parser.add_argument("--reference-queries", type=int, default=100,
                        help="queries for the (slow) XOR-and-sort loop; throughput is per query")
    parser.add_argument("--skip-search", action="store_true", help="only the training table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"benchmark on {device_name}, torch {torch.__version__}", file=sys.stderr)
    epochs = bench_epochs(args.data, args.batch_sizes, args.bits, device, args.seed)
    search = [] if args.skip_search else bench_search(args.db_sizes, args.search_bits, args.queries,
                                                      args.reference_queries, device, args.seed)
    print_tables(epochs, search, device_name)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"device": device_name, "torch": torch.__version__, "host": platform.node(),
                  "command": " ".join(sys.argv), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "epochs": epochs, "search": search}
        if device.type == "cuda":
            report["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
