"""Build time, memory and recall of the document graph (models/graph.py) on the seeded TMC-shaped synthetic corpus.

One case per process (so its peak memory is its own): `--docs N --method exact|approximate`. An exact search over
more than `--exact-full-max` documents is timed on `--queries` sampled rows against all N (its cost is linear in
the rows searched) and the whole build reported as that time scaled by N / queries, marked "scaled". Recall of the
approximate lists is measured against exact lists of the same sampled rows. Prints a markdown row, appends JSON.

    python -m bench.graph --docs 10000 100000 1000000 --out results/graph-scale.json
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


def one_case(docs: int, method: str, queries: int, exact_full_max: int, seed: int) -> dict:
    from bench.synthetic import tmc_shaped_corpus
    from corrhash.models.graph import approximate_neighbours, exact_neighbours, recall, symmetric_graph

    started = time.perf_counter()
    train, _ = tmc_shaped_corpus(seed=seed, n_train=docs, n_val=1)
    corpus_s = time.perf_counter() - started
    corpus_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sample = np.sort(np.random.default_rng(seed).choice(docs, size=min(queries, docs), replace=False))
    row = {"docs": docs, "method": method, "k": K, "nnz_per_row": train.features.nnz / docs, "corpus_s": corpus_s,
           "corpus_peak_rss_bytes": corpus_rss}
    started = time.perf_counter()
    if method == "exact" and docs > exact_full_max:
        exact_neighbours(train.features, K, queries=sample)
        row.update(search_s=(time.perf_counter() - started) * docs / len(sample), scaled=True, edges=None)
    elif method == "exact":
        ids, sims = exact_neighbours(train.features, K)
        search = time.perf_counter() - started
        graph = symmetric_graph(ids, sims)
        row.update(search_s=search, graph_s=time.perf_counter() - started, scaled=False, edges=int(graph.nnz))
    else:
        ids, sims = approximate_neighbours(train.features, K, seed=seed)
        search = time.perf_counter() - started
        graph = symmetric_graph(ids, sims)
        row.update(search_s=search, graph_s=time.perf_counter() - started, scaled=False, edges=int(graph.nnz))
        truth, _ = exact_neighbours(train.features, K, queries=sample)
        row["recall"] = recall(ids[sample], truth)
        row["recall_queries"] = len(sample)
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def table(rows: list[dict]) -> str:
    lines = [f"| docs | method | search s | per-doc cost vs the same method at {rows[0]['docs']:,} | recall@{K} "
             "(sampled) | edges | peak RSS GiB (corpus alone) |", "|---:|---|---:|---:|---:|---:|---:|"]
    base = {}
    for r in rows:
        per_doc = r["search_s"] / r["docs"]
        base.setdefault(r["method"], per_doc)
        recall = f"{r['recall']:.4f} ({r['recall_queries']})" if "recall" in r else "1 (exact)"
        seconds = f"{r['search_s']:.1f}" + (" (scaled from a sample)" if r["scaled"] else "")
        lines.append(f"| {r['docs']:,} | {r['method']} | {seconds} | {per_doc / base[r['method']]:.2f}x | {recall} | "
                     f"{r['edges'] if r['edges'] is not None else '-'} | {r['peak_rss_bytes'] / 2**30:.2f} "
                     f"({r['corpus_peak_rss_bytes'] / 2**30:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["exact", "approximate"], choices=["exact", "approximate"])
    parser.add_argument("--queries", type=int, default=1000, help="sampled rows for recall and scaled exact timing")
    parser.add_argument("--exact-full-max", type=int, default=30_000, help="larger exact cases are timed on a sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/graph-scale.json"))
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(one_case(args.docs[0], args.methods[0], args.queries, args.exact_full_max, args.seed)))
        return 0
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    for docs in args.docs:
        for method in args.methods:
            if any(r["docs"] == docs and r["method"] == method for r in rows):
                continue  # measured before: the script resumes
            print(f"graph: {docs:,} documents, {method} ...", file=sys.stderr, flush=True)
            done = subprocess.run([sys.executable, "-m", "bench.graph", "--case", "--docs", str(docs), "--methods", method,
                                   "--queries", str(args.queries), "--exact-full-max", str(args.exact_full_max),
                                   "--seed", str(args.seed)], capture_output=True, text=True,
                                  env=child_env())
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            args.out.write_text(json.dumps(rows, indent=1))
    rows.sort(key=lambda r: (r["method"], r["docs"]))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
