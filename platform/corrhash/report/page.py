"""One self-contained HTML page from a run's numbers: learning curves, a tune's trials against each searched
hyper-parameter and their importances, an ablation's paper-shaped tables and figures, and a 2-D map of the
model's codes coloured by label.

Self-contained: every image is an inline PNG (a base64 `data:` URI), styles are inline, and there is no script
and no link to fetch, so the file opens the same from disk, from the MLflow UI's artifact view or from a mail.
Every piece of text from a run (names, params, tags) is HTML-escaped. No MLflow here: `corrhash.tracking.run_report`
reads a run into a `PageInput`, and this module only draws it.
"""

from __future__ import annotations

import base64
import html
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

from corrhash.atomic import atomic_write_text
from corrhash.report.ablation import Code, FigureFile, Heading, Note, Paragraph, Report, Table, build_report
from corrhash.report.figures import UMAP, WITHOUT_UMAP, method_title, png_bytes, project_codes

LOSS_TERMS = ("loss", "recon", "kl", "neighbour")  # neighbour: the -nbr models' pairwise term, where present
CURVE_COLUMNS = ("loss", "recon", "kl", "neighbour", "kl_weight", "val_precision", "best_val_precision", "docs_per_s")
IMPORTANCE_EVALUATOR = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"
FEW_TRIALS = 10
"""Importances over fewer scored trials than this carry the caveat below."""
FEW_TRIALS_CAVEAT = f"n < {FEW_TRIALS}: indicative only"
COUNT_METRIC = re.compile(r"(^|_)(epochs?|steps?|trials|bits)(_run)?$|^(num|n)_")
"""Final metrics that count something (best_epoch, epochs_run, ...): MLflow stores every metric as a float, the
page prints these as integers (17, not 17.0000)."""
DPI = 90
"""Of the page's own figures (an ablation's figures come inlined at report.ablation.DPI)."""
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}
pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap;word-break:break-all}.note{color:#666}"""


@dataclass
class Trial:
    """One Tune trial's child run: its searched values ({param: value}) and its best val precision."""
    name: str
    run_id: str
    status: str
    params: dict
    best_val: float | None
    epochs: int
    stopped_early: bool = False
    model: str = ""
    """The registered model the trial trained (a search over several models varies it)."""


@dataclass
class Codes:
    """Test codes of the run's model (bool [n, bits]) and each document's label index (int [n])."""
    bits: np.ndarray
    labels: np.ndarray
    label_names: list[str] | None = None
    source: str = ""
    """Where the codes came from, for the caption (e.g. the model URI and the data folder)."""


@dataclass
class AblationInput:
    """What `report.ablation.build_report` takes: one row per finished cell, the extra axes, codes per cell."""
    name: str
    rows: list[dict]
    axis_names: list[str]
    description: str = ""
    codes: dict | None = None
    command: str = "(the command that ran the ablation is not recorded in MLflow)"
    """What the ablation report shows under "Command:" (the page's own command is in its header)."""


@dataclass
class PageInput:
    """Everything a page shows; `kind` is "run", "tune" or "ablation"."""
    title: str
    run_id: str
    mlflow_uri: str
    command: str
    kind: str = "run"
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    """The run's final metrics ({name: value})."""
    curves: dict = field(default_factory=dict)
    """{metric: [(epoch, value), ...]} of the run (a tune: its best trial)."""
    curves_of: str = ""
    """Whose curves they are, when not the run's own (a tune's best trial)."""
    space: dict = field(default_factory=dict)
    """A tune's searched dimensions: {param: spec string as logged, e.g. "loguniform:1e-4:1e-2"}."""
    trials: list[Trial] = field(default_factory=list)
    ablation: AblationInput | None = None
    codes: Codes | None = None
    notes: list[str] = field(default_factory=list)
    """Why a section is missing or drawn differently (shown on the page)."""


# ---- HTML pieces --------------------------------------------------------------------------------------------


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """Numbers to 4 significant decimals, everything else as text; None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) >= 1000 or 0 < abs(value) < 0.01 else f"{value:.4f}"
    return str(value)


def table(header: Sequence | None, rows: Sequence[Sequence], caption: str = "") -> str:
    """An HTML table; header None for a key/value table (no header row)."""
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    title = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{title}{head}<tbody>{body}</tbody></table>"


def metric_rows(metrics: dict) -> list[list]:
    """[[name, value]] by name, counts (COUNT_METRIC) with an integer value as integers."""
    return [[name, int(value) if COUNT_METRIC.search(name) and isinstance(value, float) and value.is_integer()
             else value] for name, value in sorted(metrics.items())]


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(png: bytes, alt: str) -> str:
    return f'<img src="{png_data_uri(png)}" alt="{esc(alt)}">'


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


# ---- learning curves ----------------------------------------------------------------------------------------


def _plot_curve(ax, points: list, name: str, color=None):
    return ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=name,
                   color=color)[0]


def curves_figure(curves: dict) -> Figure | None:
    """Panels: the loss terms, the KL weight, val precision (and best so far) per epoch; None without epochs.
    KL has its own (right-hand) axis in the loss-terms panel: it is an order of magnitude below the loss and
    the reconstruction term, and on their axis it would be a flat line."""
    panels = [(names, ylabel) for names, ylabel in ((LOSS_TERMS, "loss terms"), (("kl_weight",), "KL weight"),
                                                     (("val_precision", "best_val_precision"), "val precision"))
              if any(curves.get(n) for n in names)]
    if not panels:
        return None
    figure = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    for ax, (names, ylabel) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        drawn = [n for n in names if curves.get(n)]
        twin = "kl" in drawn and len(drawn) > 1
        lines = [_plot_curve(ax, curves[n], n) for n in drawn if not (twin and n == "kl")]
        ax.set(xlabel="epoch", ylabel=" / ".join(n for n in drawn if n != "kl") if twin else ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if twin:
            kl_ax = ax.twinx()
            color = f"C{len(lines)}"  # the colour the next line on `ax` would have had
            lines.append(_plot_curve(kl_ax, curves["kl"], "kl (right axis)", color))
            kl_ax.set_ylabel("kl", color=color)
            kl_ax.tick_params(axis="y", colors=color)
        ax.legend(lines, [line.get_label() for line in lines], fontsize="small")
    return figure


def curves_table(curves: dict) -> str:
    columns = [c for c in CURVE_COLUMNS if curves.get(c)]
    by_epoch: dict[int, dict] = {}
    for name in columns:
        for step, value in curves[name]:
            by_epoch.setdefault(int(step), {})[name] = value
    rows = [[epoch, *(by_epoch[epoch].get(c) for c in columns)] for epoch in sorted(by_epoch)]
    return table(["epoch", *columns], rows, "per-epoch metrics")


def curves_section(page: PageInput) -> str:
    figure = curves_figure(page.curves)
    if figure is None:
        return _section("Learning curves", _note("No per-epoch metrics recorded (a method without epochs, or a run "
                                                 "that logged none)."))
    whose = _note(f"Curves of {page.curves_of}.") if page.curves_of else ""
    return _section("Learning curves", whose, image(png_bytes(figure, DPI), "learning curves"),
                    curves_table(page.curves))


# ---- a tune: trials, values against params, importances -----------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _log_scale(spec: str) -> bool:
    return str(spec).startswith("loguniform:")


def trials_figure(trials: list[Trial], space: dict) -> Figure | None:
    """One scatter per searched param: each trial's best val precision against its value (log x for loguniform)."""
    scored = [t for t in trials if t.best_val is not None]
    names = [n for n in space if any(n in t.params for t in scored)]
    if not names:
        return None
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    axes = list(np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel())
    for unused in axes[len(names):]:
        unused.set_axis_off()
    for ax, name in zip(axes, names):
        points = [(t.params[name], t.best_val, t.stopped_early) for t in scored if name in t.params]
        values = [p for p, _, _ in points]
        if all(_is_number(v) for v in values):
            xs = values
        else:  # categorical: one position per distinct value, in first-seen order
            labels = list(dict.fromkeys(str(v) for v in values))
            xs = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        for early, marker, text in ((False, "o", "ran to the end"), (True, "x", "stopped early")):
            chosen = [(x, y) for x, (_, y, e) in zip(xs, points) if e == early]
            if chosen:
                ax.scatter([x for x, _ in chosen], [y for _, y in chosen], marker=marker, label=text)
        if _log_scale(space[name]) and all(_is_number(v) and v > 0 for v in values):
            _log_axis(ax, space[name], values)
        ax.set(xlabel=name, ylabel="best val precision")
        ax.legend(fontsize="x-small")
    return figure


def _log_axis(ax, spec: str, values: list) -> None:
    """A log x axis over the searched range (the spec's bounds, widened to the values) out to whole decades,
    labelled at the powers of ten only: matplotlib's default labels minor ticks when the data span less than a
    decade or so, and at 2e-4 ... 6e-4 those labels run together."""
    try:
        bounds = [float(b) for b in str(spec).split(":")[1:3]]
    except ValueError:
        bounds = []
    low, high = min([*values, *(b for b in bounds if b > 0)]), max([*values, *bounds])
    ax.set_xscale("log")
    ax.set_xlim(10 ** math.floor(math.log10(low)) / 1.25, 10 ** math.ceil(math.log10(high)) * 1.25)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=10, labelOnlyBase=True))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _distribution(spec: str, values: list):
    """The Optuna distribution of a searched param from its logged spec (see corrhash.runs.space), widened to
    the values the trials used; categorical when the values are not all numbers."""
    import optuna

    kind, _, args = str(spec).partition(":")
    numbers = [v for v in values if _is_number(v)]
    if kind in ("uniform", "loguniform", "randint") and len(numbers) == len(values):
        try:
            low, high = (float(a) for a in args.split(":"))
        except ValueError:
            low, high = min(numbers), max(numbers)
        low, high = min(low, *numbers), max(high, *numbers)
        if kind == "randint" and all(float(v).is_integer() for v in numbers):
            return optuna.distributions.IntDistribution(int(low), int(high))
        return optuna.distributions.FloatDistribution(low, high, log=kind == "loguniform" and low > 0)
    return optuna.distributions.CategoricalDistribution(sorted({str(v) for v in values}))


def scored_trials(trials: list[Trial], space: dict) -> list[Trial]:
    """The trials importances are computed over: those with a val precision and every searched value."""
    return [t for t in trials if t.best_val is not None and all(n in t.params for n in space)]


def importances(trials: list[Trial], space: dict) -> dict[str, float]:
    """Each searched param's importance for the trials' best val precision: an Optuna study rebuilt from the
    trials (optuna.trial.create_trial + Study.add_trial) and PED-ANOVA, which needs no extra package (fANOVA
    and mean-decrease-impurity need scikit-learn's forests). {} with fewer than two scored trials."""
    import optuna

    scored = scored_trials(trials, space)
    if len(scored) < 2 or not space:
        return {}
    distributions = {n: _distribution(space[n], [t.params[n] for t in scored]) for n in space}
    study = optuna.create_study(direction="maximize", study_name="rebuilt")
    for t in scored:
        params = {n: (str(t.params[n]) if isinstance(d, optuna.distributions.CategoricalDistribution)
                      else t.params[n]) for n, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=t.best_val))
    with warnings.catch_warnings():  # experimental-feature warnings of the evaluator
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())


def importances_figure(values: dict[str, float], trials: int) -> Figure:
    """Bars of the importances over `trials` scored trials; the title carries the caveat below FEW_TRIALS."""
    figure = Figure(figsize=(6, 1.5 + 0.4 * len(values)), layout="constrained")
    ax = figure.subplots()
    names = list(values)
    ax.barh(range(len(names)), [values[n] for n in names])
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlabel="importance (PED-ANOVA, sums to 1)",
           title=f"over {trials} trials" + (f" ({FEW_TRIALS_CAVEAT})" if trials < FEW_TRIALS else ""))
    return figure


def model_progress(trials: list[Trial]) -> dict[str, list[tuple[int, int, float]]]:
    """{model: [(trials so far, epochs spent so far, the model's best val precision so far)]}, one point per
    scored trial of that model, with `trials` in start order and epochs over every model's trials (a closed-form
    fit counts one): how fast each family reached its best."""
    progress: dict[str, list[tuple[int, int, float]]] = {}
    spent = 0
    for number, t in enumerate(trials, start=1):
        spent += max(1, t.epochs)
        if t.best_val is None:
            continue
        points = progress.setdefault(t.model or "?", [])
        points.append((number, spent, max(t.best_val, points[-1][2]) if points else t.best_val))
    return progress


def models_figure(progress: dict) -> Figure:
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    by_trials, by_epochs = figure.subplots(1, 2)
    for model, points in sorted(progress.items()):
        by_trials.step([p[0] for p in points], [p[2] for p in points], where="post", marker="o", label=model)
        by_epochs.step([p[1] for p in points], [p[2] for p in points], where="post", marker="o", label=model)
    by_trials.set(xlabel="trials started", ylabel="best val precision so far")
    by_epochs.set(xlabel="epochs spent, all trials", ylabel="best val precision so far")
    by_trials.legend(fontsize="x-small")
    return figure


def models_section(trials: list[Trial]) -> list[str]:
    """For a search over several models: each model's best val precision against trials and epochs spent, and a
    table of what the search spent on each."""
    progress = model_progress(trials)
    if len({t.model for t in trials}) < 2 or not progress:
        return []
    rows = sorted(([model, sum(t.model == model for t in trials), sum(max(1, t.epochs) for t in trials
                                                                      if t.model == model), points[-1][2]]
                   for model, points in progress.items()), key=lambda row: -row[3])
    return ["<h3>Best val precision per model, against trials and epochs spent</h3>",
            image(png_bytes(models_figure(progress), DPI), "best val precision per model"),
            table(["model", "trials", "epochs", "best val precision"], rows, "models, best first")]


def tune_section(page: PageInput) -> str:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" per page
    trials = sorted(page.trials, key=lambda t: -1.0 if t.best_val is None else -t.best_val)
    names = list(page.space)
    parts = [_note(f"{len(trials)} trials; searched: " + ", ".join(f"{n} = {s}" for n, s in page.space.items()))]
    parts += models_section(page.trials)
    figure = trials_figure(trials, page.space)
    if figure is not None:
        parts.append("<h3>Best val precision against each searched parameter</h3>")
        parts.append(image(png_bytes(figure, DPI), "trials against parameters"))
    values = importances(trials, page.space)
    if values:
        scored = len(scored_trials(trials, page.space))
        caveat = f" ({FEW_TRIALS_CAVEAT})" if scored < FEW_TRIALS else ""
        parts.append("<h3>Parameter importances</h3>")
        parts.append(_note(f"Evaluator: {IMPORTANCE_EVALUATOR}, over {scored} trials' best val precision{caveat}."))
        parts.append(image(png_bytes(importances_figure(values, scored), DPI), "parameter importances"))
        parts.append(table(["parameter", "importance"], [[n, float(v)] for n, v in values.items()],
                           "parameter importances"))
    else:
        parts.append(_note("No parameter importances: they need two trials with a val precision and every "
                           "searched value."))
    parts.append("<h3>Trials</h3>")
    parts.append(table(["trial", "model", "status", "stopped early", *names, "best val precision", "epochs",
                        "run id"],
                       [[t.name, t.model, t.status, "yes" if t.stopped_early else "no",
                         *(t.params.get(n) for n in names), t.best_val, t.epochs, t.run_id] for t in trials],
                       "trials, best first"))
    return _section("Trials", *parts)


# ---- an ablation: report.ablation's own report, inlined -----------------------------------------------------


def _block_html(block, pngs: dict[str, bytes]) -> str:
    if isinstance(block, Heading):
        level = min(block.level + 1, 6)  # the page's own h1 is the title
        return f"<h{level}>{esc(block.text)}</h{level}>"
    if isinstance(block, Paragraph):
        return "".join(f"<p>{esc(line)}</p>" for line in block.text.splitlines() if line.strip())
    if isinstance(block, Code):
        return f"<pre>{esc(block.text)}</pre>"
    if isinstance(block, Table):
        return table(block.headers, block.rows)
    if isinstance(block, FigureFile):
        return f"<p>• {esc(block.caption)}: {esc(block.file)}</p>" + image(pngs[block.file], block.file)
    if isinstance(block, Note):
        return f"<p>• {esc(block.text)}</p>"
    raise TypeError(f"not a block of an ablation report: {block!r}")


def report_html(report: Report) -> str:
    """An ablation's report (`report.ablation.Report`) as HTML: its headings one level down, every text escaped
    and every figure inlined."""
    return "".join(_block_html(block, report.pngs) for block in report.blocks)


def ablation_section(page: PageInput) -> str:
    """The ablation's report as `jobs/ablate.py` writes it to report.md (tables, paired comparisons, times,
    figures), from the same blocks."""
    ablation = page.ablation
    report = build_report(ablation.rows, name=ablation.name, axis_names=ablation.axis_names,
                          command=ablation.command, description=ablation.description, codes=ablation.codes)
    return _section("Ablation", report_html(report))


# ---- the codes map ------------------------------------------------------------------------------------------


def codes_figure(codes: Codes, sample: int, seed: int = 0) -> tuple[Figure, str, int]:
    """The codes in 2-D (report.figures' projection: UMAP with the Hamming metric, scikit-learn's t-SNE without
    umap-learn), coloured by label, on a seeded sample of at most `sample` documents; (figure, the method that
    drew it, points drawn)."""
    bits, labels = np.asarray(codes.bits, dtype=bool), np.asarray(codes.labels)
    if len(bits) > sample:
        keep = np.sort(np.random.default_rng(seed).choice(len(bits), size=sample, replace=False))
        bits, labels = bits[keep], labels[keep]
    xy, method = project_codes(bits)
    figure = Figure(figsize=(7.5, 6), layout="constrained")
    ax = figure.subplots()
    for label in np.unique(labels):
        mask = labels == label
        name = codes.label_names[label] if codes.label_names and 0 <= label < len(codes.label_names) else label
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=_tab20(int(label)), label=str(name))
    if len(np.unique(labels)) <= 20:
        ax.legend(fontsize="x-small", markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{len(bits)} test codes, coloured by label\n{method_title(method, 60)}", fontsize="medium")
    return figure, method, len(bits)


def _tab20(index: int):
    return colormaps["tab20"](index % 20)


def codes_section(page: PageInput, sample: int) -> str:
    figure, method, drawn = codes_figure(page.codes, sample)
    how = f"{method}, as the paper's Figure 2" if method == UMAP else f"{method}: {WITHOUT_UMAP}"
    caption = (f"{drawn} of {len(page.codes.bits)} test documents' {page.codes.bits.shape[1]}-bit codes, "
               f"coloured by their first label; {how}. {page.codes.source}")
    return _section("Codes map", _note(caption), image(png_bytes(figure, DPI), "2-D map of the codes"))


# ---- the page -----------------------------------------------------------------------------------------------


def build_page(page: PageInput, codes_sample: int = 2000) -> str:
    """The whole HTML document."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = table(None, [["run id", page.run_id], ["kind", page.kind], ["MLflow URI", page.mlflow_uri],
                        ["generated", generated]], "run")
    parts = [f"<h1>{esc(page.title)}</h1>", head, f"<p>Command that made this page:</p><pre>{esc(page.command)}</pre>"]
    if page.metrics:
        parts.append(_section("Final metrics", table(["metric", "value"], metric_rows(page.metrics))))
    if page.kind != "ablation":
        parts.append(curves_section(page))
    if page.kind == "tune":
        parts.append(tune_section(page))
    if page.ablation is not None:
        parts.append(ablation_section(page))
    if page.codes is not None:
        parts.append(codes_section(page, codes_sample))
    if page.params:
        parts.append(_section("Parameters", table(["param", "value"], sorted(page.params.items()))))
    if page.notes:
        parts.append(_section("Notes", "".join(f"<p>{esc(n)}</p>" for n in page.notes)))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(page.title)}</title><style>{STYLE}</style></head>\n<body>{''.join(parts)}</body></html>\n")


def write_page(page: PageInput, path: str | Path, codes_sample: int = 2000) -> Path:
    """Build the page and write it atomically."""
    atomic_write_text(Path(path), build_page(page, codes_sample))
    return Path(path)
