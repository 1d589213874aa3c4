"""The tables of results/best.md from the folder results/run_best.sh fills (default runs/best): per corpus and code
length, the cross-method search's choice, its 3-seed re-run, each method's default-recipe number, the paper's
CorrSH and the best published number; then CorrSH against NASH at the best recipe on 3 paired seeds.

Usage: python results/best_table.py runs/best
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from corrhash.paper import paper_precision  # noqa: E402

# Best published test p@100 the issue names: SNUH (Ou et al., ACL 2021) on 20ng, AMMI (Stratos & Wiseman,
# ICML 2020) on Reuters.
PUBLISHED = {("20ng-paper", 64): (0.6513, "SNUH"), ("20ng-paper", 128): (0.6751, "SNUH"),
             ("reuters", 64): (0.8506, "AMMI"), ("reuters", 128): (0.8602, "AMMI")}
LINE = re.compile(r"\]\s+(\S+)\s+best val ([0-9.]+)\s+\((\d+) trials, (\d+) epochs\)")


def results(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def seeds(folder: Path, tag: str) -> list[float]:
    found = [results(folder / "runs" / f"{tag}-s{s}" / "results.json") for s in (0, 1, 2)]
    return [r["test_precision"] for r in found if r]


def mean_std(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" + (
        "" if len(values) == 3 else f" ({len(values)} seeds)")


def tuned_text(best: dict) -> str:
    tuned = {k: v for k, v in best["tuned"].items() if k != "name"}
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned.items())


def main(folder: Path) -> None:
    stages = sorted(folder.glob("best-*b/best/results.json"))
    print("| data | bits | chosen (search) | its test p@100 | re-run, 3 seeds | each method, first converge recipe (KL step 0.05, lr 3e-3), seed 0 | "
          "paper CorrSH | best published | search budget, wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    paired = []
    for path in stages:
        best = results(path)
        name = path.parent.parent.name
        data, bits = best["dataset"], best["model"]["bits"]
        label = name[len("best-"):].rsplit("-", 1)[0]
        log = (folder / f"{name}.log").read_text(errors="replace")
        per_model = {m: (float(v), int(t), int(e)) for m, v, t, e in LINE.findall(log)}
        timing = folder / f"{name}.time"
        wall = f"{float(timing.read_text().split()[0]):.0f} s" if timing.is_file() else "? s"
        trials = sum(t for _, t, _ in per_model.values())
        epochs = sum(e for _, _, e in per_model.values())
        defaults = []
        for model in per_model:
            r = results(folder / "runs" / f"{label}-{bits}-{model}-default-s0" / "results.json")
            defaults.append(f"{model} {r['test_precision']:.4f}" if r else f"{model} not run")
        published = PUBLISHED.get((label, bits))
        paper = paper_precision(data, "corrsh", bits)
        print(f"| {label} | {bits} | **{best['model']['name']}** ({tuned_text(best)}); val {best['val_precision']:.4f} "
              f"| {best['test_precision']:.4f} | {mean_std(seeds(folder, f'{name}-chosen'))} | "
              f"{'; '.join(defaults)} | {paper if paper else '-'} | "
              f"{f'{published[0]} ({published[1]})' if published else '-'} | "
              f"{trials} trials, {epochs} epochs, {wall} |")
        corrsh, nash = seeds(folder, f"{name}-corrsh-at-best"), seeds(folder, f"{name}-nash-at-best")
        paired.append((label, bits, corrsh, nash, per_model))
    print("\nCorrSH against NASH at the best recipe (the chosen config's recipe values; each model's own parts at "
          "their defaults), test p@100, seeds 0-2 paired:\n")
    print("| data | bits | CorrSH | NASH | CorrSH − NASH, paired | verdict | search: best val per model (trials) |")
    print("|---|---|---|---|---|---|---|")
    for label, bits, corrsh, nash, per_model in paired:
        n = min(len(corrsh), len(nash))
        if n < 2:
            print(f"| {label} | {bits} | {mean_std(corrsh)} | {mean_std(nash)} | - | fewer than 2 pairs | |")
            continue
        diffs = [c - m for c, m in zip(corrsh[:n], nash[:n])]
        mean, std = statistics.mean(diffs), statistics.stdev(diffs)
        verdict = ("larger than the seed spread" if abs(mean) > 2 * std / n ** 0.5 else "within the seed spread")
        searched = "; ".join(f"{m} {v:.4f} ({t})" for m, (v, t, _) in sorted(per_model.items(), key=lambda i: -i[1][0]))
        print(f"| {label} | {bits} | {mean_std(corrsh)} | {mean_std(nash)} | {mean:+.4f} ± {std:.4f} | {verdict} | "
              f"{searched} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/best"))
