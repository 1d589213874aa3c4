"""Print a markdown table of test precision@k from results.json files of any launcher
(jobs/train.py --local, jobs/train.py on Ray, jobs/tune.py --out): they share one schema.

Example: python jobs/quality_table.py runs/quality/*/results.json
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from corrhash import commands
from corrhash.errors import ConfigError
from corrhash.paper import METHOD_ORDER, paper_precision


@dataclass
class TableOptions:
    results: Annotated[list[Path], tyro.conf.Positional]
    """results.json files written by jobs/train.py or jobs/tune.py"""

    def __post_init__(self) -> None:
        if not self.results:
            raise ConfigError("give one or more results.json files")


def parse_args(argv=None) -> TableOptions:
    return commands.parse(TableOptions, __doc__, argv, title="table")


def main(argv=None) -> int:
    return commands.run(lambda: print_table(parse_args(argv)))


def print_table(args: TableOptions) -> None:
    rows = defaultdict(dict)
    for path in args.results:
        r = json.loads(path.read_text())
        rows[(r["dataset"], r["model"]["name"])][r["model"]["bits"]] = r
    bits = sorted({b for row in rows.values() for b in row})
    print("| dataset | model | " + " | ".join(f"{b} bits (ours / paper p@100)" for b in bits) + " |")
    print("|---|---|" + "---|" * len(bits))
    def paper_order(key):  # the paper's row order; methods it does not have (corrsh-mixture) last
        dataset, model = key
        return dataset, METHOD_ORDER.index(model) if model in METHOD_ORDER else len(METHOD_ORDER), model

    for (dataset, model), by_bits in sorted(rows.items(), key=lambda item: paper_order(item[0])):
        cells = []
        for b in bits:
            r = by_bits.get(b)
            paper = paper_precision(dataset, model, b)
            ours = number(r["test_precision"]) if r else "-"
            cells.append(f"{ours} / {paper:.4f}" if paper and r and r["eval_k"] == 100 else ours)
        print(f"| {dataset} | {model} | " + " | ".join(cells) + " |")
    print("\nper run: launcher, val p@k (selection), best epoch / epochs run, test p@k ordered, fit seconds")
    for (dataset, model), by_bits in sorted(rows.items(), key=lambda item: paper_order(item[0])):
        for b, r in sorted(by_bits.items()):
            print(f"- {dataset} {model} {b}: {r['launcher']}, val p@{r['eval_k']} {r['val_precision']:.4f}, "
                  f"epoch {r['best_epoch']}/{r['epochs_run']}, test ordered {number(r['test_precision_ordered'])}, "
                  f"{r['fit_seconds']:.0f} s")


def number(value: float | None) -> str:
    return "not scored" if value is None else f"{value:.4f}"
