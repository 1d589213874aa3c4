"""The neighbour-aware pipeline end to end as the corpus grows (issue 31): for each size N, a synthetic text corpus
(bench/synth.py) goes through the platform's own jobs, each run as its own subprocess so its time and memory are
its own:

    prepare (prepare_data.py text --ray)  ->  graph (graph.py --ray)  ->  train (train.py --local, nash-nbr,
    --stream always)  ->  hash on Ray Data (search.py --corpus --ray --index-out)  ->  queries (search.py --index)

and, beside the Ray Data hashing, the same hashing in one process, so the two indexes' codes are compared bit for
bit and their times give a ratio. Per stage: wall seconds (Python and Ray start-up included), the stage's own time
where its job reports one (preparation's "done in", the graph's "search in", the epochs at their reported docs/s,
the index's "indexed ... in"), the cost per
document against the smallest N, and the peak memory of the process tree (PSS summed, shared pages split).

With --address the Ray stages join that cluster (e.g. two `ray start` nodes on this machine); the graph job's last
line says how many blocks each node searched, and is kept in the row.

    python -m bench.end_to_end --sizes 10000 100000 --out results/scale-nbr/e2e.json

Rows are appended to --out as each size finishes, and a size already there is skipped: the run resumes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from bench import REPO
from bench.prepare_scale import measured, run_generate

STAGES = ("prepare", "graph", "train", "hash_ray", "hash_one_process", "queries")
DONE = re.compile(r"done in ([0-9.]+)s")
GRAPH = re.compile(r"(\w+) search in ([0-9.]+) s(?:; recall@\d+ ([0-9.]+))?")
PLACED = re.compile(r"blocks searched on Ray in .*")
EPOCH = re.compile(r"epoch +\d+ .* ([0-9]+) docs/s")
INDEXED = re.compile(r"indexed \d+ documents from .* in ([0-9.]+) s")
TEST = re.compile(r"test precision@100: ([0-9.]+)")


def _job(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / script), *args]


def _stage(command: list[str], timeout: float | None) -> tuple[dict, str]:
    wall, memory, stderr = measured(command, timeout)
    return {"wall_s": round(wall, 1), "peak_tree_pss_mib": round(memory.peak_pss_mib),
            "peak_process_rss_mib": round(memory.peak_process_rss_mib)}, stderr


def _codes(index: Path) -> np.ndarray:
    with np.load(index, allow_pickle=False) as saved:
        return saved["codes"]


def _queries(raw: Path, out: Path, count: int) -> Path:
    """The first `count` documents of the corpus's last file, as one query a line."""
    import pyarrow.parquet as pq

    last = sorted(raw.glob("part-*"))[-1]
    if last.suffix == ".parquet":
        texts = pq.read_table(last, columns=["text"]).column("text").to_pylist()[:count]
    else:
        texts = [json.loads(line)["text"] for line, _ in zip(last.open(), range(count))]
    out.write_text("".join(" ".join(text.split()) + "\n" for text in texts))
    return out


def run_size(n_docs: int, workdir: Path, epochs: int, actors: int, address: str | None, queries: int,
             timeout: float | None, log=print) -> dict:
    """One size through every stage; a row with each stage's measurements."""
    raw, data, run = workdir / f"synth-{n_docs}", workdir / f"prepared-{n_docs}", workdir / f"run-{n_docs}"
    cluster = ["--address", address] if address else []
    row: dict = {"n_docs": n_docs, "address": address, "epochs": epochs, "hash_actors": actors,
                 "generate": run_generate(raw, n_docs, seed=0, files=8, timeout=timeout)}
    log(f"[{n_docs}] generated {row['generate']}")

    row["prepare"], err = _stage(_job("prepare_data.py", "text", "--raw", str(raw), "--out", str(data),
                                      "--overwrite", "--ray", *cluster), timeout)
    row["prepare"]["own_s"] = float(DONE.findall(err)[-1])
    manifest = json.loads((data / "manifest.json").read_text())
    row["train_docs"] = manifest["splits"]["train"]["documents"]
    log(f"[{n_docs}] prepare {row['prepare']}")

    row["graph"], err = _stage(_job("graph.py", "--data", str(data), "--ray", *cluster), timeout)
    method, seconds, recall = GRAPH.findall(err)[-1]
    placed = PLACED.findall(err)
    row["graph"].update(own_s=float(seconds), method=method, sampled_recall=float(recall) if recall else None,
                        placement=placed[-1] if placed else None)
    log(f"[{n_docs}] graph {row['graph']}")

    row["train"], err = _stage(_job("train.py", "--local", "--data", str(data), "--model", "nash-nbr", "--bits",
                                    "64", "--epochs", str(epochs), "--stream", "always", "--out", str(run)),
                               timeout)
    rates = [int(rate) for rate in EPOCH.findall(err)]
    row["train"].update(docs_per_s=rates, test_p100=float(TEST.findall(err)[-1]),
                        own_s=round(epochs * row["train_docs"] / float(np.mean(rates)), 1))
    log(f"[{n_docs}] train {row['train']}")

    model = str(run / "model")
    ray_index, one_index = workdir / f"index-{n_docs}-ray.npz", workdir / f"index-{n_docs}-one.npz"
    row["hash_ray"], err = _stage(_job("search.py", "--model", model, "--corpus", str(data), "--index-kind", "flat",
                                     "--ray", "--hash-actors", str(actors), "--index-out", str(ray_index),
                                     *cluster), timeout)
    row["hash_ray"]["own_s"] = float(INDEXED.findall(err)[-1])
    row["hash_one_process"], err = _stage(_job("search.py", "--model", model, "--corpus", str(data), "--index-kind",
                                             "flat", "--index-out", str(one_index)), timeout)
    row["hash_one_process"]["own_s"] = float(INDEXED.findall(err)[-1])
    row["codes_identical"] = bool(np.array_equal(_codes(ray_index), _codes(one_index)))
    log(f"[{n_docs}] hash on Ray Data {row['hash_ray']}, one process {row['hash_one_process']}, "
        f"codes identical: {row['codes_identical']}")

    query_file = _queries(raw, workdir / f"queries-{n_docs}.txt", queries)
    row["queries"], _ = _stage(_job("search.py", "--model", model, "--index", str(ray_index), "--queries",
                                    str(query_file), "--k", "100"), timeout)
    row["queries"]["count"] = queries
    log(f"[{n_docs}] queries {row['queries']}")
    return row


def _seconds(row: dict, stage: str) -> float:
    """A stage's own time where its job reports one, else its wall time."""
    return row[stage].get("own_s") or row[stage]["wall_s"]


def markdown(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda row: (row["address"] or "", row["n_docs"]))
    lines = ["| N | train docs | stage | wall s | own s | cost/doc vs smallest N | peak tree PSS MiB | notes |",
             "|---:|---:|---|---:|---:|---:|---:|---|"]
    smallest: dict = {}
    for row in rows:
        for stage in STAGES:
            cost = _seconds(row, stage) / row["n_docs"]
            base = smallest.setdefault((row["address"], stage), cost)
            own = row[stage].get("own_s")
            notes = {"graph": lambda s: f"{s['method']}, recall {s['sampled_recall']}; {s['placement'] or ''}",
                     "train": lambda s: f"docs/s by epoch {s['docs_per_s']}, test p@100 {s['test_p100']}",
                     "hash_ray": lambda s: f"{s['own_s'] / row['hash_one_process']['own_s']:.2f}x one process's "
                                             f"hashing time; codes identical: {row['codes_identical']}",
                     "queries": lambda s: f"{s['count']} queries, k = 100"}.get(stage, lambda s: "")(row[stage])
            shown_own = own if own is not None else "-"
            lines.append(f"| {row['n_docs']:,} | {row['train_docs']:,} | {stage} | {row[stage]['wall_s']} | "
                         f"{shown_own} | {cost / base:.2f}x | {row[stage]['peak_tree_pss_mib']:,} | {notes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes N")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "e2e", help="corpora, shards, runs, indexes")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "scale-nbr" / "e2e.json",
                        help="JSON rows, appended as each size finishes; sizes already there are skipped")
    parser.add_argument("--epochs", type=int, default=2, help="nash-nbr training epochs")
    parser.add_argument("--hash-actors", type=int, default=2, help="Ray Data actors hashing the corpus")
    parser.add_argument("--queries", type=int, default=1000, help="queries answered from the index")
    parser.add_argument("--address", help="Ray cluster for the Ray stages (default: a local Ray per job)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds one stage may take")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = parser.parse_args(argv)
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    if not args.table:
        for n_docs in args.sizes:
            if any(row["n_docs"] == n_docs and row["address"] == args.address for row in rows):
                print(f"[{n_docs}] already in {args.out}; skipped")
                continue
            workdir = args.workdir / (f"cluster-{args.address.replace(':', '-')}" if args.address else "local")
            workdir.mkdir(parents=True, exist_ok=True)
            rows.append(run_size(n_docs, workdir, args.epochs, args.hash_actors, args.address, args.queries,
                                 args.timeout))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1))
            tmp.replace(args.out)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
