"""The "quality holds" table of results/scale-nbr.md from the runs of results/run_scale_nbr_quality.sh.

    .venv/bin/python results/scale_nbr_table.py runs/scale-nbr

Per corpus: nash-nbr's test precision@100 (tie-aware) at 64 bits over seeds 0-2 as mean ± std, trained on the
exact graph and on the pruned search's graph, the paired difference (pruned - exact) and its verdict: "larger
than the seed spread" when |mean of the paired differences| > 2 · their std / √n (as results/best.md), else
"within the seed spread". Each run's graph search line (recall, index terms, candidates) is read from its log.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

NAME = re.compile(r"(?P<data>.+)-64-nash-nbr-(?P<search>exact|pruned)-s(?P<seed>\d+)")


def main(folder: Path) -> None:
    runs = {}
    for path in sorted(folder.glob("*/results.json")):
        match = NAME.fullmatch(path.parent.name)
        result = json.loads(path.read_text())
        runs[(match["data"], match["search"], int(match["seed"]))] = (result["test_precision"], result["best_epoch"])
    print("| data | graph search | test p@100 (3 seeds) | per seed | best epochs |")
    print("|---|---|---|---|---|")
    for data in sorted({d for d, _, _ in runs}, reverse=True):
        for search in ("exact", "pruned"):
            values = [runs[(data, search, s)] for s in range(3) if (data, search, s) in runs]
            precisions = [p for p, _ in values]
            print(f"| {data} | {search} | {statistics.mean(precisions):.4f} ± {statistics.stdev(precisions):.4f} | "
                  f"{', '.join(f'{p:.4f}' for p in precisions)} | {', '.join(str(e) for _, e in values)} |")
    print("\n| data | pairs | pruned − exact (mean ± std) | verdict |")
    print("|---|---|---|---|")
    for data in sorted({d for d, _, _ in runs}, reverse=True):
        seeds = [s for s in range(3) if (data, "exact", s) in runs and (data, "pruned", s) in runs]
        diffs = [runs[(data, "pruned", s)][0] - runs[(data, "exact", s)][0] for s in seeds]
        mean, std = statistics.mean(diffs), statistics.stdev(diffs)
        verdict = "larger than the seed spread" if abs(mean) > 2 * std / len(diffs) ** 0.5 else "within the seed spread"
        print(f"| {data} | {len(diffs)} | {mean:+.4f} ± {std:.4f} | {verdict} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
