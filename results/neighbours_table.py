"""The tables of results/neighbours.md from the runs of results/run_neighbours.sh (each run's results.json), and of
results/best.md §6 from results/run_snuh.sh's:

    .venv/bin/python results/neighbours_table.py runs/nbr
    .venv/bin/python results/neighbours_table.py runs/snuh snuh,corrsh-snuh,nash-nbr,corrsh-nbr \
        corrsh-snuh:snuh,snuh:nash-nbr,corrsh-snuh:nash-nbr,corrsh-nbr:nash-nbr

Per corpus and code length: each model's test precision@100 (tie-aware) over seeds 0-2 as mean ± std, and each
-nbr model against its plain version and against STH, paired by seed. "Larger than the seed spread" when
|mean of the paired differences| > 2 · their std / √n (as results/best.md). Runs that have not finished are
listed as missing, never filled in.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PUBLISHED = {  # precision@100: CorrSH's Tables 2-3 (shared/paper); SNUH's 20ng 64 and 128 bits as issue 22 cites them
    ("reuters", "corrsh"): {32: 0.8420, 64: 0.8465, 128: 0.8482},
    ("20ng-paper", "corrsh"): {32: 0.6183, 64: 0.6279, 128: 0.6359},
    ("20ng-paper", "snuh"): {64: 0.6513, 128: 0.6751},
}
SNUH_ON_OUR_SHARDS = {("20ng-paper", 64): 0.6389, ("20ng-paper", 128): 0.6494, ("reuters", 64): 0.8613}
"""SNUH run with its authors' code and tuned run.sh on these exact shards, scored by our evaluator (issue 33)."""
MODELS = ("nash-nbr", "nash", "corrsh-nbr", "corrsh", "sth")
PAIRS = (("nash-nbr", "nash"), ("nash-nbr", "sth"), ("corrsh-nbr", "corrsh"), ("corrsh-nbr", "sth"),
         ("corrsh-nbr", "nash-nbr"))


def load(folder: Path) -> dict:
    runs = {}
    for path in folder.glob("*/results.json"):
        data, bits, rest = path.parent.name.split("-", 2) if not path.parent.name.startswith("20ng-paper") else \
            ("20ng-paper", *path.parent.name.removeprefix("20ng-paper-").split("-", 1))
        model, _, seed = rest.rpartition("-s")
        runs[(data, int(bits), model, int(seed))] = json.loads(path.read_text())["test_precision"]
    return runs


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def paired(runs: dict, data: str, bits: int, a: str, b: str) -> str:
    diffs = [runs[(data, bits, a, s)] - runs[(data, bits, b, s)] for s in range(3)
             if (data, bits, a, s) in runs and (data, bits, b, s) in runs]
    if len(diffs) < 2:
        return f"| {data} | {bits} | {a} − {b} | {len(diffs)} pair(s) | - | too few pairs |"
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    verdict = "larger than the seed spread" if abs(mean) > 2 * std / len(diffs) ** 0.5 else "within the seed spread"
    return f"| {data} | {bits} | {a} − {b} | {len(diffs)} | {mean:+.4f} ± {std:.4f} | {verdict} |"


def main(folder: str, models=MODELS, pairs=PAIRS) -> None:
    runs = load(Path(folder))
    settings = sorted({(d, b) for d, b, _, _ in runs}, key=lambda x: (x[0] != "reuters", x[1]))
    models = [m for m in models if any(k[2] == m for k in runs)]
    print("| data | bits | " + " | ".join(models) + " | paper CorrSH | SNUH (published) | SNUH on these shards |")
    print("|---|---|" + "---|" * (len(models) + 3))
    for data, bits in settings:
        cells = [summary([runs[k] for k in sorted(runs) if k[:3] == (data, bits, m)]) for m in models]
        corrsh = PUBLISHED.get((data, "corrsh"), {}).get(bits)
        snuh = PUBLISHED.get((data, "snuh"), {}).get(bits)
        ours = SNUH_ON_OUR_SHARDS.get((data, bits))
        print(f"| {data} | {bits} | " + " | ".join(cells) + f" | {corrsh or '-'} | {snuh or '-'} | {ours or '-'} |")
    print()
    print("| data | bits | comparison | pairs | paired difference | verdict |")
    print("|---|---|---|---|---|---|")
    for data, bits in settings:
        for a, b in pairs:
            if any(k[:3] == (data, bits, a) for k in runs) and any(k[:3] == (data, bits, b) for k in runs):
                print(paired(runs, data, bits, a, b))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(arguments[0] if arguments else "runs/nbr",
         arguments[1].split(",") if len(arguments) > 1 else MODELS,
         [tuple(pair.split(":")) for pair in arguments[2].split(",")] if len(arguments) > 2 else PAIRS)
