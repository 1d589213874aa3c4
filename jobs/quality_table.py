"""Print a markdown table of test precision@k from results.json files of any launcher
(jobs/train.py --local, jobs/train.py on Ray, jobs/tune.py --out): they share one schema.

Example: python jobs/quality_table.py runs/quality/*/results.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

# Zheng et al. (ACL 2020), Tables 1-3: test precision@100 by dataset, model and bits.
PAPER = {
    ("20ng", "corrsh"): {8: 0.4389, 16: 0.5839, 32: 0.6183, 64: 0.6279, 128: 0.6359},
    ("20ng", "nash"): {8: 0.3786, 16: 0.5108, 32: 0.5671, 64: 0.5071, 128: 0.4664},
    ("20ng", "vdsh"): {8: 0.3643, 16: 0.3904, 32: 0.4327, 64: 0.1731, 128: 0.0522},
    ("20ng", "lsh"): {8: 0.0578, 16: 0.0597, 32: 0.0666, 64: 0.0770, 128: 0.0949},
    ("reuters", "corrsh"): {8: 0.7589, 16: 0.8212, 32: 0.8420, 64: 0.8465, 128: 0.8482},
    ("reuters", "nash"): {8: 0.7113, 16: 0.7624, 32: 0.7993, 64: 0.7812, 128: 0.7559},
    ("tmc", "corrsh"): {8: 0.6959, 16: 0.7243, 32: 0.7534, 64: 0.7606, 128: 0.7632},
    ("tmc", "nash"): {8: 0.5849, 16: 0.6573, 32: 0.6921, 64: 0.6548, 128: 0.5998},
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json files written by jobs/train.py or jobs/tune.py")
    args = parser.parse_args(argv)
    rows = defaultdict(dict)
    for path in args.results:
        r = json.loads(path.read_text())
        rows[(r["dataset"], r["model"]["name"])][r["model"]["bits"]] = r
    bits = sorted({b for row in rows.values() for b in row})
    print("| dataset | model | " + " | ".join(f"{b} bits (ours / paper p@100)" for b in bits) + " |")
    print("|---|---|" + "---|" * len(bits))
    for (dataset, model), by_bits in sorted(rows.items()):
        cells = []
        for b in bits:
            r = by_bits.get(b)
            paper = PAPER.get((dataset, model), {}).get(b)
            ours = number(r["test_precision"]) if r else "-"
            cells.append(f"{ours} / {paper:.4f}" if paper and r and r["eval_k"] == 100 else ours)
        print(f"| {dataset} | {model} | " + " | ".join(cells) + " |")
    print("\nper run: launcher, val p@k (selection), best epoch / epochs run, test p@k ordered, fit seconds")
    for (dataset, model), by_bits in sorted(rows.items()):
        for b, r in sorted(by_bits.items()):
            print(f"- {dataset} {model} {b}: {r['launcher']}, val p@{r['eval_k']} {r['val_precision']:.4f}, "
                  f"epoch {r['best_epoch']}/{r['epochs_run']}, test ordered {number(r['test_precision_ordered'])}, "
                  f"{r['fit_seconds']:.0f} s")


def number(value: float | None) -> str:
    return "not scored" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
