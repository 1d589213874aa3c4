"""The ablation report's figures, drawn with matplotlib's object API (`matplotlib.figure.Figure`, saved through
the Agg canvas): no pyplot, so no display, no global backend switch and no open-figure registry to leak on
cluster nodes or in tests."""

from __future__ import annotations

import io
import textwrap
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from corrhash.log import log
from corrhash.report.configs import config_keys, config_of, datasets_of, label, sort_configs, value_key

PRECISION = "test precision@100"


@dataclass
class Drawn:
    """What draw_all made: {file name: figure}, {file name: caption for report.md}, and notes for the report
    about figures left out or drawn differently."""
    figures: dict[str, Figure] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, file_name: str, figure: Figure | None, caption: str, missing: str) -> None:
        if figure is None:
            self.notes.append(missing)
        else:
            self.figures[file_name] = figure
            self.captions[file_name] = caption


def png_bytes(figure: Figure, dpi: int) -> bytes:
    """The figure as PNG bytes at `dpi` (report.md's files and the page's inline images)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _panels(count: int, columns: int = 3, size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, list]:
    columns = min(columns, count)
    rows = -(-count // columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = list(np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel())
    for unused in axes[count:]:
        unused.set_axis_off()
    return figure, axes[:count]


def _errorbars(ax, xs: list, entries: list[dict], name: str) -> None:
    ax.errorbar(xs, [e["mean"] for e in entries], yerr=[e["std"] or 0.0 for e in entries], marker="o",
                capsize=3, label=name)


def precision_vs_bits(summary: list[dict], axis_names: Sequence[str]) -> Figure:
    """The paper's Figure 1: per dataset, test p@100 (mean ± std over seeds) against bits, a line per method (and
    setting of the extra axes)."""
    datasets = datasets_of(summary)
    figure, axes = _panels(len(datasets))
    for ax, dataset in zip(axes, datasets):
        lines: dict[tuple, list[dict]] = defaultdict(list)
        for e in summary:
            if e["dataset"] == dataset and e["n"]:
                lines[(e["method"], *(e[a] for a in axis_names))].append(e)
        for key, entries in lines.items():
            _errorbars(ax, [e["bits"] for e in entries], entries, label(dict(zip(["method", *axis_names], key))))
        bits = sorted({e["bits"] for e in summary if e["dataset"] == dataset})
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits, [str(b) for b in bits])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(title=dataset, xlabel="bits", ylabel=PRECISION)
        ax.legend(fontsize="x-small")
    return figure


def axis_curve(summary: list[dict], axis_names: Sequence[str], name: str) -> Figure | None:
    """Test p@100 against one extra axis (e.g. Table 5's v and k), a line per method, bits and setting of the
    other axes. Lines with a single value are left out: in a union of grids they are the other arm's fixed
    points, not a curve. None when no line has two values."""
    others = [a for a in axis_names if a != name]
    values = sorted({e[name] for e in summary}, key=value_key)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    position = {v: (v if numeric else i) for i, v in enumerate(values)}
    datasets = datasets_of(summary)
    panels: dict[str, dict[tuple, list[dict]]] = {d: defaultdict(list) for d in datasets}
    for e in summary:
        if e["n"]:
            panels[e["dataset"]][(e["method"], e["bits"], *(e[a] for a in others))].append(e)
    panels = {d: {k: v for k, v in lines.items() if len(v) > 1} for d, lines in panels.items()}
    panels = {d: lines for d, lines in panels.items() if lines}
    if not panels:
        return None
    figure, axes = _panels(len(panels))
    for ax, (dataset, lines) in zip(axes, panels.items()):
        for key, entries in lines.items():
            entries = sorted(entries, key=lambda e: value_key(e[name]))
            _errorbars(ax, [position[e[name]] for e in entries], entries,
                       label(dict(zip(["method", "bits", *others], key))))
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set(title=dataset, xlabel=name, ylabel=PRECISION)
        ax.legend(fontsize="x-small")
    return figure


def time_per_epoch(epoch_summary: list[dict], axis_names: Sequence[str]) -> Figure | None:
    """Bars of seconds per epoch (mean ± std over seeds) per configuration; None when no cell has epochs."""
    entries = [e for e in epoch_summary if e["n"]]
    if not entries:
        return None
    keys = config_keys(axis_names)
    figure = Figure(figsize=(8, 1.5 + 0.3 * len(entries)), layout="constrained")
    ax = figure.subplots()
    positions = range(len(entries))
    ax.barh(positions, [e["mean"] for e in entries], xerr=[e["std"] or 0.0 for e in entries], capsize=3)
    ax.set_yticks(positions, [label(dict(zip(keys, config_of(e, keys)))) for e in entries], fontsize="small")
    ax.invert_yaxis()
    ax.set(xlabel="seconds per epoch (mean ± std over seeds)")
    return figure


def _mean_std_by_epoch(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch, the mean and sample std over the curves that reached it (early stopping ends some sooner);
    std 0 where only one did."""
    values = np.full((len(curves), max(len(c) for c in curves)), np.nan)
    for i, curve in enumerate(curves):
        values[i, :len(curve)] = curve
    counts = np.sum(~np.isnan(values), axis=0)
    mean = np.nansum(values, axis=0) / counts
    squares = np.nansum((values - mean) ** 2, axis=0)
    return mean, np.where(counts > 1, np.sqrt(squares / np.maximum(counts - 1, 1)), 0.0)


def learning_curves(rows: list[dict], axis_names: Sequence[str]) -> Figure | None:
    """Val precision per epoch, mean ± std over seeds, a line per configuration and a panel per dataset and
    bits (does CorrSH converge faster?). A closed-form method (SpH, STH, LSH: one val precision, no epochs) is
    a dashed horizontal line at its mean over seeds, a reference for the trained ones. None when no cell
    recorded a curve over epochs."""
    keys = config_keys(axis_names)
    curves: dict[tuple, list[list[float]]] = defaultdict(list)
    for row in rows:
        if row["val_curve"]:
            curves[config_of(row, keys)].append(list(row["val_curve"]))
    if not any(len(curve) > 1 for config_curves in curves.values() for curve in config_curves):
        return None
    configs = sort_configs(curves, keys, datasets_of(rows))
    panel_keys = list(dict.fromkeys((c[0], c[2]) for c in configs))
    figure, axes = _panels(len(panel_keys))
    panels = dict(zip(panel_keys, axes))
    longest = {key: max((len(curve) for c in configs if (c[0], c[2]) == key for curve in curves[c]))
               for key in panel_keys}
    for config in configs:
        ax = panels[(config[0], config[2])]
        setting = {k: v for k, v in zip(keys, config) if k not in ("dataset", "bits")}
        if all(len(curve) == 1 for curve in curves[config]):
            value = float(np.mean([curve[0] for curve in curves[config]]))
            ax.plot([1, max(2, longest[(config[0], config[2])])], [value, value], linestyle="--", linewidth=1,
                    label=f"{label(setting)} (closed form, no epochs)")
            continue
        mean, std = _mean_std_by_epoch(curves[config])
        epochs = np.arange(1, len(mean) + 1)
        ax.plot(epochs, mean, label=label(setting))
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    for (dataset, bits), ax in panels.items():
        ax.set(title=f"{dataset} {bits} bits", xlabel="epoch", ylabel="val precision")
        ax.legend(fontsize="x-small")
    return figure


UMAP = "UMAP (Hamming metric, random_state 0)"
TSNE = "t-SNE (scikit-learn, Hamming metric, random_state 0)"
WITHOUT_UMAP = ("umap-learn is not installed, so this is not the paper's UMAP; "
                "`pip install corrhash[report]` gives UMAP")


def method_title(method: str, width: int = 70) -> str:
    """A figure title's line naming the projection, and why it is not UMAP where it is not, wrapped to fit."""
    return method if method == UMAP else textwrap.fill(f"{method}: {WITHOUT_UMAP}", width, break_on_hyphens=False)


def project_codes(codes: np.ndarray) -> tuple[np.ndarray, str]:
    """2-D coordinates of binary codes and the method that made them (UMAP or TSNE above): UMAP with the Hamming
    metric and a fixed random_state, as the paper's Figure 2, where umap-learn (the `corrhash[report]` extra) is
    installed; otherwise scikit-learn's t-SNE with the same metric and seed (a neighbourhood map too, ~8 s for
    2,000 codes on one core)."""
    codes = np.asarray(codes, dtype=bool)
    # The longest silent step of a report (93 s for UMAP's first call, numba compiling): say what it is doing.
    log(f"projecting {len(codes)} codes to 2-D for the figure (UMAP where installed, else t-SNE; up to minutes)")
    if len(codes) < 3:  # nothing to embed: t-SNE needs a perplexity below the number of points
        return np.column_stack([np.arange(len(codes), dtype=np.float64), np.zeros(len(codes))]), TSNE
    try:
        import umap
    except ImportError:
        from sklearn.manifold import TSNE as SklearnTSNE

        # Perplexity (the effective number of neighbours) must stay below the number of points.
        tsne = SklearnTSNE(n_components=2, metric="hamming", init="pca", random_state=0,
                           perplexity=min(30.0, (len(codes) - 1) / 3))
        with warnings.catch_warnings():  # e.g. a degenerate PCA initialisation of identical codes
            warnings.simplefilter("ignore")
            return tsne.fit_transform(codes.astype(np.float32)), TSNE
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": the price of repeatability
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, metric="hamming", random_state=0,
                            n_neighbors=max(2, min(15, len(codes) - 1)))
        return reducer.fit_transform(codes.astype(np.float32)), UMAP


def codes_projection(codes: dict[str, tuple], rows: list[dict], axis_names: Sequence[str]) -> tuple[Figure, str]:
    """One panel per cell in `codes` ({cell id: (bool codes [n, bits], int labels [n])}): its codes in 2-D
    coloured by label. Returns the figure and the method that drew it (UMAP or TSNE)."""
    keys = [*config_keys(axis_names)[:3], "seed", *axis_names]
    by_cell = {row["cell"]: row for row in rows}
    figure, axes = _panels(len(codes), columns=4, size=(4.0, 4.0))
    method = UMAP
    for ax, (cell, (cell_codes, labels)) in zip(axes, codes.items()):
        xy, method = project_codes(np.asarray(cell_codes, dtype=bool))
        ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(labels), cmap="tab20", s=3)
        row = by_cell.get(cell)
        ax.set_title(label({k: row[k] for k in keys}) if row else cell, fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(f"the codes, coloured by label\n{method_title(method)}")
    return figure, method


def draw_all(rows: list[dict], summary: list[dict], epoch_summary: list[dict], axis_names: Sequence[str],
             codes: dict[str, tuple] | None) -> Drawn:
    """Every figure of the report that the rows can fill."""
    drawn = Drawn()
    drawn.add("precision_vs_bits.png", precision_vs_bits(summary, axis_names),
              "test precision@100 against bits per dataset (the paper's Figure 1)", "")
    for name in axis_names:
        if len({value_key(e[name]) for e in summary}) > 1:
            drawn.add(f"axis_{name}.png", axis_curve(summary, axis_names, name),
                      f"test precision@100 against {name}",
                      f"axis_{name}.png left out: no method/bits/other-axes setting has two values of {name}")
    drawn.add("time_per_epoch.png", time_per_epoch(epoch_summary, axis_names),
              "seconds per epoch per configuration", "time_per_epoch.png left out: no cell recorded epoch times")
    drawn.add("learning_curves.png", learning_curves(rows, axis_names),
              "val precision per epoch, mean ± std over seeds",
              "learning_curves.png left out: no cell recorded a val curve over epochs")
    if codes:
        figure, method = codes_projection(codes, rows, axis_names)
        drawn.add("umap_codes.png", figure,
                  f"{UMAP} of each cell's codes, coloured by label (the paper's Figure 2)" if method == UMAP else
                  f"{method} of each cell's codes, coloured by label: {WITHOUT_UMAP}", "")
    return drawn
