"""The report of an ablation: each configuration's test precision@100 over its seeds beside the paper's number,
which one-factor differences stand out from the seed spread, time per epoch, and figures.

Input is one plain dict per cell (see `write_report`), so the same code reports a fresh run and rebuilds the
report from an earlier `results.parquet`. The seed is the replicate: a configuration is everything else
(`configs.config_keys`), and comparisons pair cells by seed, which cancels the part of the noise that a seed
shares between two configurations (same initial weights and batch order).

The report is data first (`build_report`: a `Report` of blocks, its tables as headers and rows of cells, and
its PNGs), drawn twice: to markdown for report.md here (`Report.markdown`) and to HTML by `report.page`."""

from __future__ import annotations

import math
import shlex
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from corrhash.atomic import atomic_write_bytes
from corrhash.errors import CorrhashError
from corrhash.paper import paper_precision
from corrhash.report import figures
from corrhash.report.configs import config_keys, config_of, datasets_of, label, method_key, sort_configs

# Every row's keys with their parquet types; the extra axes follow "seed", any other key goes last.
COLUMNS = {
    "cell": pa.string(), "dataset": pa.string(), "method": pa.string(), "bits": pa.int64(), "seed": pa.int64(),
    "val_precision": pa.float64(), "test_precision": pa.float64(), "test_precision_ordered": pa.float64(),
    "best_epoch": pa.int64(), "epochs_run": pa.int64(), "fit_seconds": pa.float64(),
    "epoch_seconds": pa.float64(), "val_curve": pa.list_(pa.float64()), "node": pa.string(),
}
DPI = 110
"""Of the report's PNG files (the page inlines them as they are)."""
SPREAD = "larger than the seed spread"
NO_SPREAD = "within the seed spread"
ONE_SEED = "one seed: no verdict"


@dataclass
class Heading:
    text: str
    level: int
    """1 the report's title, 2 a section, 3 a table's own heading."""

    def markdown(self) -> list[str]:
        return [f"{'#' * self.level} {self.text}", ""]


@dataclass
class Paragraph:
    text: str

    def markdown(self) -> list[str]:
        return [self.text, ""]


@dataclass
class Code:
    text: str

    def markdown(self) -> list[str]:
        return ["```", self.text, "```", ""]


@dataclass
class Table:
    """Column headers, rows of cells as shown, and which columns hold numbers (right-aligned in report.md)."""
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]

    def markdown(self) -> list[str]:
        return [_pipe_row(self.headers), "|" + "".join("---:|" if n else "---|" for n in self.numeric),
                *map(_pipe_row, self.rows), ""]


@dataclass
class FigureFile:
    """One of the report's PNGs (`Report.pngs[file]`) with its caption."""
    file: str
    caption: str

    def markdown(self) -> list[str]:
        return [f"- {self.caption}: [{self.file}]({self.file})", "", f"![{self.file}]({self.file})", ""]


@dataclass
class Note:
    """A list item after the figures: one left out or drawn differently, and why."""
    text: str

    def markdown(self) -> list[str]:
        return [f"- {self.text}"]


Block = Heading | Paragraph | Code | Table | FigureFile | Note


@dataclass
class Report:
    """An ablation's report: its blocks in order and {file name: PNG} of its figures."""
    blocks: list[Block]
    pngs: dict[str, bytes]

    def markdown(self) -> str:
        """report.md."""
        return "\n".join(line for block in self.blocks for line in block.markdown()).rstrip() + "\n"


def _pipe_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _present(value) -> bool:
    """A metric a cell reported: not None and not NaN (numpy scalars included)."""
    return value is not None and not math.isnan(float(value))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator); None where undefined (no value; one value)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _per_seed(rows: list[dict], keys: list[str], metric: str) -> dict[tuple, dict[int, list[float]]]:
    """{configuration: {seed: values of `metric`}}; a configuration whose cells all lack the metric maps to {}."""
    groups: dict[tuple, dict[int, list[float]]] = {}
    for row in rows:
        seeds = groups.setdefault(config_of(row, keys), {})
        if _present(row.get(metric)):
            seeds.setdefault(row["seed"], []).append(float(row[metric]))
    return groups


def summarise(rows: list[dict], axis_names: Sequence[str], metric: str = "test_precision") -> list[dict]:
    """One dict per configuration, in report order: its keys (dataset, method, bits, each extra axis), then
    `mean` and `std` (sample std; None with under two values) of `metric` over its cells, `n` (cells that have
    the metric) and `seeds` (sorted). A configuration whose cells all lack the metric has n = 0, mean None."""
    keys = config_keys(axis_names)
    groups = _per_seed(rows, keys, metric)
    summary = []
    for config in sort_configs(groups, keys, datasets_of(rows)):
        values = [v for seed in sorted(groups[config]) for v in groups[config][seed]]
        mean, std = _mean_std(values)
        summary.append({**dict(zip(keys, config)), "mean": mean, "std": std, "n": len(values),
                        "seeds": sorted(groups[config])})
    return summary


def _verdict(mean: float, std: float | None, n: int) -> str:
    """Two standard errors of the mean difference: a difference the seeds alone rarely produce."""
    if n < 2:
        return ONE_SEED
    return SPREAD if abs(mean) > 2 * std / math.sqrt(n) else NO_SPREAD


def paired_differences(rows: list[dict], axis_names: Sequence[str], metric: str = "test_precision") -> list[dict]:
    """Every pair of configurations on the same dataset and bits that differ in exactly one of the method or
    one extra axis and share at least one seed: {"factor", "a", "b" (its two values, a first in report order),
    "context" (the settings they share), "mean", "std" (of the per-seed differences b - a; std None for one
    seed), "n", "seeds", "verdict"}. A seed with several cells in one configuration counts as their mean."""
    keys = config_keys(axis_names)
    factors = ["method", *axis_names]
    groups = _per_seed(rows, keys, metric)
    configs = sort_configs(groups, keys, datasets_of(rows))
    means = {config: {seed: statistics.fmean(v) for seed, v in groups[config].items()} for config in configs}
    pairs = []
    for i, a in enumerate(configs):
        for b in configs[i + 1:]:
            differing = [key for key, x, y in zip(keys, a, b) if x != y]
            if len(differing) != 1 or differing[0] not in factors:
                continue
            seeds = sorted(means[a].keys() & means[b].keys())
            if not seeds:
                continue
            factor = differing[0]
            diffs = [means[b][seed] - means[a][seed] for seed in seeds]
            mean, std = _mean_std(diffs)
            pairs.append({"factor": factor, "a": a[keys.index(factor)], "b": b[keys.index(factor)],
                          "context": {k: v for k, v in zip(keys, a) if k != factor}, "mean": mean, "std": std,
                          "n": len(seeds), "seeds": seeds, "verdict": _verdict(mean, std, len(seeds))})
    return pairs


def _fmt(value: float | None, digits: int = 4, sign: str = "") -> str:
    return "—" if value is None else f"{value:{sign}.{digits}f}"


def _mean_cell(entry: dict, digits: int = 4) -> str:
    if entry["n"] == 0:
        return "no result"
    seeds = f"{entry['n']} seed{'s' if entry['n'] != 1 else ''}"
    if entry["std"] is None:
        return f"{_fmt(entry['mean'], digits)} ({seeds})"
    return f"{_fmt(entry['mean'], digits)} ± {_fmt(entry['std'], digits)} ({seeds})"


def _precision_tables(summary: list[dict], axis_names: Sequence[str]) -> list[Block]:
    """Per dataset and per setting of the extra axes, the paper's table shape: methods by bits."""
    blocks: list[Block] = [
        Heading("Test precision@100", 2),
        Paragraph("Mean ± sample std over seeds (n seeds). \"paper\": Zheng et al. (ACL 2020) Tables 1-3, the "
                  "paper's own setting of that method, shown wherever the paper has the dataset, method and bits.")]
    tables: dict[tuple, list[dict]] = defaultdict(list)
    for entry in summary:
        tables[(entry["dataset"], *(entry[a] for a in axis_names))].append(entry)
    for (dataset, *setting), entries in tables.items():
        bits = sorted({e["bits"] for e in entries})
        title = " ".join([dataset, *(f"{a}={v}" for a, v in zip(axis_names, setting))])
        by_method: dict[str, dict[int, dict]] = defaultdict(dict)
        for e in entries:
            by_method[e["method"]][e["bits"]] = e
        rows = []
        for method, cells in by_method.items():
            shown = [method]
            for b in bits:
                text = _mean_cell(cells[b]) if b in cells else ""
                paper = paper_precision(dataset, method, b)
                shown.append(text + (f"; paper {paper:.4f}" if paper is not None and b in cells else ""))
            rows.append(shown)
        blocks += [Heading(title, 3),
                   Table(["method", *(f"{b} bits" for b in bits)], rows, [False, *(True for _ in bits)])]
    return blocks


def _paired_section(pairs: list[dict], summary: list[dict], datasets: list[str]) -> list[Block]:
    blocks: list[Block] = [
        Heading("Paired comparisons", 2),
        Paragraph("Two configurations that differ in one factor (the method or one extra axis), compared seed by "
                  "seed over the seeds they share: mean and sample std of the per-seed differences b − a of test "
                  "precision@100, n seeds. \"larger than the seed spread\": |mean| > 2 · std / √n with n ≥ 2.")]
    if not pairs:
        blocks.append(Paragraph("No two configurations differ in one factor only and share a seed."))
    for dataset in datasets:
        mine = [p for p in pairs if p["context"]["dataset"] == dataset]
        if not mine:
            continue
        rows = [[label(p["context"], skip=("dataset",)), p["factor"], f"{p['a']}", f"{p['b']}",
                 _fmt(p["mean"], sign="+"), _fmt(p["std"]), f"{p['n']}", p["verdict"]] for p in mine]
        blocks += [Heading(dataset, 3),
                   Table(["shared setting", "factor", "a", "b", "mean diff (b − a)", "std", "n", "verdict"], rows,
                         [False] * 4 + [True] * 3 + [False])]
    rows = []
    for e in summary:
        config = {k: v for k, v in e.items() if k not in ("mean", "std", "n", "seeds")}
        rows.append([label(config), _fmt(e["mean"]), _fmt(e["std"]), f"{e['n']}", ", ".join(map(str, e["seeds"]))])
    return blocks + [Heading("Seed spread per configuration", 3),
                     Table(["configuration", "mean", "seed std", "n", "seeds"], rows, [False, True, True, True, False])]


def _time_section(rows: list[dict], epoch: list[dict], axis_names: Sequence[str]) -> list[Block]:
    keys = config_keys(axis_names)
    fit = {config_of(e, keys): e for e in summarise(rows, axis_names, "fit_seconds")}
    nodes: dict[tuple, set] = defaultdict(set)
    for row in rows:
        nodes[config_of(row, keys)].add(str(row["node"]))
    table = []
    for e in epoch:
        config = config_of(e, keys)
        table.append([label(dict(zip(keys, config))), _mean_cell(e, 3) if e["n"] else "—",
                      _mean_cell(fit[config], 1) if fit[config]["n"] else "—", ", ".join(sorted(nodes[config]))])
    return [Heading("Time", 2),
            Paragraph("Seconds per epoch (mean over a cell's epochs, then mean ± sample std over seeds) and seconds "
                      "of the whole fit; \"—\" for methods without epochs. Cells on different nodes are not "
                      "comparable in time."),
            Table(["configuration", "s/epoch", "fit s", "nodes"], table, [False, True, True, False])]


def _check_rows(rows: list[dict], axis_names: Sequence[str], name: str) -> None:
    if not rows:
        raise CorrhashError(f"ablation {name}: no cell results to report")
    needed = [*COLUMNS, *axis_names]
    for row in rows:
        missing = [key for key in needed if key not in row]
        if missing:
            raise CorrhashError(f"ablation {name}: the row of cell {row.get('cell', '?')} lacks {', '.join(missing)}")


def _parquet_bytes(rows: list[dict], axis_names: Sequence[str]) -> bytes:
    """One row per cell, every key a column (known keys typed, val_curve a list column)."""
    names = list(dict.fromkeys([*list(COLUMNS)[:5], *axis_names, *list(COLUMNS)[5:],
                                *(key for row in rows for key in row)]))
    table = pa.table({key: pa.array([row.get(key) for row in rows], type=COLUMNS.get(key)) for key in names})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_results(path: str | Path) -> list[dict]:
    """The rows of a `results.parquet` written by write_report, as write_report takes them."""
    return pq.read_table(path).to_pylist()


def build_report(rows: list[dict], *, name: str, axis_names: Sequence[str], command: str | Sequence[str],
                 description: str = "", codes: dict[str, tuple] | None = None) -> Report:
    """The report of `rows` in memory (arguments as write_report's): report.md's blocks and the PNG figures."""
    _check_rows(rows, axis_names, name)
    summary = summarise(rows, axis_names)
    epoch = summarise(rows, axis_names, "epoch_seconds")
    drawn = figures.draw_all(rows, summary, epoch, axis_names, codes)
    datasets = datasets_of(rows)
    tested = sum(_present(row["test_precision"]) for row in rows)
    command_text = command if isinstance(command, str) else shlex.join(command)
    methods = sorted({row["method"] for row in rows}, key=method_key)
    blocks: list[Block] = [Heading(f"Ablation {name}", 1)]
    blocks += [Paragraph(description.strip())] if description.strip() else []
    blocks += [Paragraph("Command:"), Code(command_text),
               Paragraph(f"{len(rows)} cells ({tested} with a test precision@100); datasets: {', '.join(datasets)}; "
                         f"methods: {', '.join(methods)}; extra axes: {', '.join(axis_names) or 'none'}.")]
    blocks += _precision_tables(summary, axis_names)
    blocks += _paired_section(paired_differences(rows, axis_names), summary, datasets)
    blocks += _time_section(rows, epoch, axis_names)
    blocks += [Heading("Figures", 2), *(FigureFile(file, drawn.captions[file]) for file in drawn.figures),
               *(Note(note) for note in drawn.notes)]
    return Report(blocks, {file_name: figures.png_bytes(figure, DPI) for file_name, figure in drawn.figures.items()})


def write_report(rows: list[dict], folder: str | Path, *, name: str, axis_names: Sequence[str],
                 command: str | Sequence[str], description: str = "",
                 codes: dict[str, tuple] | None = None) -> dict[str, Path]:
    """Write `results.parquet`, the PNG figures and `report.md` into `folder`, each file atomically; return
    {file name: path}. Everything is built in memory first, so an error while drawing or formatting leaves
    an earlier report in `folder` as it was; report.md is written last. Files of an earlier report that this
    one does not make (e.g. the figure of an axis no longer in the grid) are left in place, unlinked.

    `rows`: one dict per cell with the keys of COLUMNS and each name in `axis_names`; `command`: the command
    line that ran the ablation (a list is quoted with shlex.join); `codes`: {cell id: (bool codes [n, bits],
    int labels [n])} for the 2-D projection of codes (UMAP, or scikit-learn's t-SNE where umap-learn is missing)."""
    report = build_report(rows, name=name, axis_names=axis_names, command=command, description=description,
                          codes=codes)
    files = {"results.parquet": _parquet_bytes(rows, axis_names), **report.pngs,
             "report.md": report.markdown().encode("utf-8")}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, data in files.items():
        atomic_write_bytes(folder / file_name, data)
    return {file_name: folder / file_name for file_name in files}
