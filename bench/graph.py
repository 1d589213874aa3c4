"""Build time, memory and recall of the document graph's searches (models/graph.py): exact, pruned and nndescent,
in one process or as Ray tasks on a local Ray of 1 or 2 worker CPUs (or a running cluster), on the seeded
TMC-shaped synthetic corpus (`--docs N`) or on prepared shards (`--data FOLDER`).

One case per process (its peak memory is its own). Recall is tie-aware (`search_quality`: a found neighbour
counts when its cosine is at least the exact k-th) against the exact lists of `--queries` sampled rows (a sample
other than the one the pruned search tunes itself on), with the mean cosine of the found and exact lists. A
search over more than `--full-max` documents is timed on `--queries` sampled rows and its whole build reported as
the time its blocks took scaled by N / queries, plus its one-off setup (the transposes, a pruned search's ladder,
climbed on the whole corpus), marked "scaled" (a block's cost is linear in its rows). Prints a markdown table, appends JSON rows (resumes: a case measured
before is not run again).

    python -m bench.graph --docs 10000 100000 1000000 --methods exact pruned --out results/graph-scale.json
    python -m bench.graph --data data/20ng-paper data/reuters --workers 0 1 2 --out results/graph-real.json
    python -m bench.graph --docs 100000 1000000 --methods exact exact-torch --device cuda   # bench/gpu.sh
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import child_env

K = 25
RECALL_SEED = 12345


def _corpus(source: str, seed: int):
    from bench.synthetic import tmc_shaped_corpus
    from corrhash.data import TfidfShards

    if source.isdigit():
        return tmc_shaped_corpus(seed=seed, n_train=int(source), n_val=1)[0].features
    return TfidfShards(source).split("train").features


def _runner(workers: int, address: str | None):
    if workers == 0 and not address:
        from corrhash.models.graph import run_here

        return run_here, {}
    import ray
    from corrhash.launch.blocks import ray_blocks

    ray.init(address=address or "local", **({} if address else {"num_cpus": workers}), include_dashboard=False,
             logging_level="ERROR", configure_logging=False)
    return ray_blocks, {"ray_cpus": ray.cluster_resources().get("CPU"), "ray_nodes": len(ray.nodes())}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def one_case(source: str, method: str, workers: int, queries: int, full_max: int, seed: int,
             address: str | None, device: str = "cpu") -> dict:
    from corrhash.models import graph

    started = time.perf_counter()
    features = _corpus(source, seed)
    n = features.shape[0]
    row = {"corpus": source if not source.isdigit() else "synthetic", "docs": n, "method": method, "k": K,
           "workers": workers, "nnz_per_row": features.nnz / n, "corpus_s": time.perf_counter() - started,
           "corpus_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    run_blocks, ray_info = _runner(workers, address)
    row.update(ray_info)
    sample = np.sort(np.random.default_rng(RECALL_SEED).choice(n, size=min(queries, n), replace=False))
    scaled = n > full_max and method != "exact-torch"  # the device searches every row: its setup is not scaled
    blocks = _Timed(run_blocks)
    started, cpu = time.perf_counter(), time.process_time()
    if method == "exact":
        _, sims = graph.exact_neighbours(features, K, queries=sample if scaled else None, run_blocks=blocks)
        found = sims if scaled else sims[sample]
        search = {}
    elif method == "exact-torch":
        _, sims = graph.torch_exact_neighbours(features, K, device, queries=sample if scaled else None)
        _synchronize(device)
        found = sims if scaled else sims[sample]
        search = {"device": device}
    elif method == "pruned":
        if scaled:  # climb the ladder on the whole corpus, then time the chosen rung's blocks on the sample only
            _, _, choice = graph.pruned_neighbours(features, K, seed=seed, run_blocks=lambda f, s, jobs: [])
            ladder_s = time.perf_counter() - started
            if choice.exact:
                found = graph.exact_neighbours(features, K, queries=sample, run_blocks=blocks)[1]
            else:
                found = graph.pruned_neighbours(features, K, choice.index_terms, choice.candidates, seed=seed,
                                                run_blocks=_only(sample, blocks))[1]
            row["ladder_s"] = ladder_s
        else:
            _, sims, choice = graph.pruned_neighbours(features, K, seed=seed, run_blocks=blocks)
            found = sims[sample]
        search = {"index_terms": choice.index_terms, "candidates": choice.candidates, "sampled_recall": choice.recall,
                  "tried": choice.tried, "searched_exactly": choice.exact}
    else:
        _, sims = graph.nndescent_neighbours(features, K, seed=seed)
        found = sims[sample]
        search = {}
    seconds = time.perf_counter() - started
    # Scaled: the blocks' time grows with the rows searched, the rest (setup, the ladder) is paid once.
    once = row.get("ladder_s", seconds - blocks.seconds)
    row.update(search_s=once + blocks.seconds * (n / len(sample) if scaled else 1), blocks_s=blocks.seconds,
               setup_s=once, scaled=scaled, search=search, driver_cpu_s=time.process_time() - cpu)
    exact = found if method == "exact" else graph.exact_neighbours(features, K, queries=sample)[1]
    row.update(graph.search_quality(found, exact), recall_queries=len(sample))
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


class _Timed:
    """A block runner that adds up the time spent running blocks (the part of a search that scales with its rows)."""

    def __init__(self, run_blocks):
        self.run_blocks, self.seconds = run_blocks, 0.0

    def __call__(self, function, shared, jobs):
        started = time.perf_counter()
        try:
            return self.run_blocks(function, shared, jobs)
        finally:
            self.seconds += time.perf_counter() - started


def _only(sample: np.ndarray, run_blocks):
    """A runner that searches only `sample`'s rows (the scaled timing), in the jobs the full search would make."""
    def run(function, shared, jobs):
        from corrhash.models.graph import _jobs

        return run_blocks(function, shared, _jobs(sample))
    return run


def table(rows: list[dict]) -> str:
    lines = ["| corpus | docs | method | where | search s | per-doc cost vs the smallest of its kind | "
             f"recall@{K} (tie-aware) | mean cos found / exact | chosen | peak RSS GiB |",
             "|---|---:|---|---|---:|---:|---:|---|---|---:|"]
    base = {}
    for r in sorted(rows, key=lambda r: (r["corpus"], r["method"], r["workers"], r["docs"])):
        per_doc = r["search_s"] / r["docs"]
        base.setdefault((r["corpus"], r["method"], r["workers"]), per_doc)
        where = "1 process" if r["workers"] == 0 else f"Ray, {r.get('ray_cpus', r['workers']):g} CPUs"
        s = r.get("search", {})
        chosen = ("exact (cheaper)" if s.get("searched_exactly") else
                  f"{s['index_terms']} terms, {s['candidates']} cand." if "index_terms" in s else "-")
        seconds = f"{r['search_s']:.1f}" + (" (scaled)" if r["scaled"] else "")
        lines.append(f"| {r['corpus']} | {r['docs']:,} | {r['method']} | {where} | {seconds} | "
                     f"{per_doc / base[(r['corpus'], r['method'], r['workers'])]:.2f}x | {r['recall']:.4f} "
                     f"({r['recall_queries']}) | {r['mean_cosine_found']:.4f} / {r['mean_cosine_exact']:.4f} | "
                     f"{chosen} | {r['peak_rss_bytes'] / 2**30:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="*", default=[], help="synthetic corpus sizes")
    parser.add_argument("--data", nargs="*", default=[], help="prepared shards folders")
    parser.add_argument("--methods", nargs="+", default=["exact", "pruned"],
                        choices=["exact", "exact-torch", "pruned", "nndescent"],
                        help="exact-torch: the blocked torch product on --device (bench/gpu.sh's graph section)")
    parser.add_argument("--device", default="cpu", help="exact-torch's device (cuda on the GPU machine)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="0: one process; N: a local Ray with N CPUs running the blocks as tasks")
    parser.add_argument("--address", help="a running Ray cluster for the blocks (instead of a local Ray)")
    parser.add_argument("--queries", type=int, default=1000, help="sampled rows for recall and scaled timing")
    parser.add_argument("--full-max", type=int, default=30_000, help="larger cases are timed on the sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/graph-scale.json"))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(one_case(args.case, args.methods[0], args.workers[0], args.queries, args.full_max,
                                  args.seed, args.address, args.device)))
        return 0
    if not args.docs and not args.data:
        parser.error("give --docs and/or --data")
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    for source in [str(d) for d in args.docs] + args.data:
        for method in args.methods:
            for workers in args.workers if method in ("exact", "pruned") else [0]:
                label = "synthetic" if source.isdigit() else source
                if any(r["corpus"] == label and (not source.isdigit() or r["docs"] == int(source))
                       and r["method"] == method and r["workers"] == workers for r in rows):
                    continue  # measured before: the script resumes
                print(f"graph: {source}, {method}, workers {workers} ...", file=sys.stderr, flush=True)
                done = subprocess.run([sys.executable, "-m", "bench.graph", "--case", source, "--methods", method,
                                       "--workers", str(workers), "--queries", str(args.queries),
                                       "--full-max", str(args.full_max), "--seed", str(args.seed),
                                       "--device", args.device,
                                       *(["--address", args.address] if args.address else [])],
                                      capture_output=True, text=True, env=child_env())
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return done.returncode
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["ray_placement"] = [line for line in done.stderr.splitlines() if "searched on Ray in" in line]
                rows.append(row)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
