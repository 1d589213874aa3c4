"""Tests for corrhash.report: the statistics by hand on a tiny row set, the markdown tables, the parquet round
trip, the figures and the atomic writes."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

import corrhash.atomic
from corrhash.errors import CorrhashError
from corrhash.report import figures, paired_differences, summarise, write_report
from corrhash.paper import paper_precision
from corrhash.report.ablation import read_results

PNG = b"\x89PNG\r\n\x1a\n"
AXES = ["rank"]


def row(method, bits, seed, rank, test, dataset="reuters", curve=(0.1, 0.2), epoch_seconds=0.5):
    return {"cell": f"{method}{bits}{seed}{rank}{dataset}".ljust(16, "0")[:16], "dataset": dataset,
            "method": method, "bits": bits, "seed": seed, "rank": rank, "val_precision": test,
            "test_precision": test, "test_precision_ordered": test, "best_epoch": 2, "epochs_run": 2,
            "fit_seconds": 3.0 + seed, "epoch_seconds": epoch_seconds, "val_curve": list(curve), "node": "n1"}


@pytest.fixture
def rows():
    """corrsh 64b rank 10: 0.80 0.82 0.84 (mean 0.82, std 0.02); corrsh 64b rank 0: 0.78 0.79 0.83 (mean 0.80);
    nash 64b rank 10 seeds 0 1: 0.79 0.83; corrsh and nash at 32 bits, one seed each."""
    return [row("corrsh", 64, 0, 10, 0.80), row("corrsh", 64, 1, 10, 0.82), row("corrsh", 64, 2, 10, 0.84),
            row("corrsh", 64, 0, 0, 0.78), row("corrsh", 64, 1, 0, 0.79), row("corrsh", 64, 2, 0, 0.83),
            row("nash", 64, 0, 10, 0.79), row("nash", 64, 1, 10, 0.83),
            row("corrsh", 32, 0, 10, 0.75, curve=(0.1, 0.3, 0.4)), row("nash", 32, 0, 10, 0.70)]


def by_setting(entries, **setting):
    [found] = [e for e in entries if all(e[k] == v for k, v in setting.items())]
    return found


# ---------------------------------------------------------------- statistics

def test_summarise_mean_std_n_in_paper_order(rows):
    summary = summarise(rows, AXES)
    assert [(e["method"], e["bits"], e["rank"]) for e in summary] == [
        ("nash", 32, 10), ("nash", 64, 10), ("corrsh", 32, 10), ("corrsh", 64, 0), ("corrsh", 64, 10)]
    e = by_setting(summary, method="corrsh", bits=64, rank=10)
    assert e["mean"] == pytest.approx(0.82) and e["std"] == pytest.approx(0.02) and e["n"] == 3
    assert e["seeds"] == [0, 1, 2]
    e = by_setting(summary, method="nash", bits=64)
    assert e["mean"] == pytest.approx(0.81) and e["std"] == pytest.approx(math.sqrt(2) * 0.02) and e["n"] == 2
    e = by_setting(summary, method="corrsh", bits=32)
    assert e["mean"] == pytest.approx(0.75) and e["std"] is None and e["n"] == 1


def test_summarise_keeps_a_configuration_without_results(rows):
    rows[-1]["test_precision"] = None
    e = by_setting(summarise(rows, AXES), method="nash", bits=32)
    assert (e["n"], e["mean"], e["std"], e["seeds"]) == (0, None, None, [])


def test_paired_differences_by_hand(rows):
    pairs = paired_differences(rows, AXES)
    assert len(pairs) == 3  # rank 0 vs 10 (corrsh 64b), nash vs corrsh at 64b rank 10 and at 32b rank 10
    rank = by_setting(pairs, factor="rank")
    assert (rank["a"], rank["b"], rank["n"]) == (0, 10, 3)
    assert rank["context"] == {"dataset": "reuters", "method": "corrsh", "bits": 64}
    assert rank["mean"] == pytest.approx(0.02) and rank["std"] == pytest.approx(0.01)
    assert rank["verdict"] == "larger than the seed spread"  # 0.02 > 2 * 0.01 / sqrt(3) = 0.0115
    method = [p for p in pairs if p["factor"] == "method"]
    at64 = by_setting(method, context={"dataset": "reuters", "bits": 64, "rank": 10})
    assert (at64["a"], at64["b"], at64["seeds"]) == ("nash", "corrsh", [0, 1])
    assert at64["mean"] == pytest.approx(0.0) and at64["std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert at64["verdict"] == "within the seed spread"
    at32 = by_setting(method, context={"dataset": "reuters", "bits": 32, "rank": 10})
    assert at32["mean"] == pytest.approx(0.05) and at32["std"] is None and at32["n"] == 1
    assert at32["verdict"] == "one seed: no verdict"


def test_pairs_need_a_shared_seed_and_the_same_dataset(rows):
    rows = [r for r in rows if r["bits"] == 64 and r["rank"] == 10]
    for r in rows:
        if r["method"] == "nash":
            r["seed"] += 10
    assert paired_differences(rows, AXES) == []
    other = [{**r, "dataset": "tmc"} for r in rows if r["method"] == "corrsh"]
    assert paired_differences([r for r in rows if r["method"] == "corrsh"] + other, AXES) == []


def test_paper_lookup_by_label():
    assert paper_precision("20ng-paper", "corrsh", 64) == 0.6279
    assert paper_precision("reuters", "bmsh", 8) is None
    assert paper_precision("synthetic", "corrsh", 64) is None


# ---------------------------------------------------------------- the report

def test_report_tables_paper_values_and_pairs(rows, tmp_path):
    written = write_report(rows, tmp_path / "out", name="t5", axis_names=AXES, command=["jobs/ablate.py", "--grid",
                           "g.yaml"], description="A tiny ablation.")
    text = written["report.md"].read_text()
    assert text.startswith("# Ablation t5\n\nA tiny ablation.\n")
    assert "jobs/ablate.py --grid g.yaml" in text and "10 cells (10 with a test precision@100)" in text
    assert "### reuters rank=10\n\n| method | 32 bits | 64 bits |" in text
    assert ("| nash | 0.7000 (1 seed); paper 0.7993 | 0.8100 ± 0.0283 (2 seeds); paper 0.7812 |\n"
            "| corrsh | 0.7500 (1 seed); paper 0.8420 | 0.8200 ± 0.0200 (3 seeds); paper 0.8465 |") in text
    assert "### reuters rank=0\n\n| method | 64 bits |\n|---|---:|\n| corrsh | 0.8000 ± 0.0265 (3 seeds)" in text
    assert "| corrsh 64b | rank | 0 | 10 | +0.0200 | 0.0100 | 3 | larger than the seed spread |" in text
    assert "| 32b rank=10 | method | nash | corrsh | +0.0500 | — | 1 | one seed: no verdict |" in text
    assert "| reuters corrsh 64b rank=10 | 0.8200 | 0.0200 | 3 | 0, 1, 2 |" in text  # seed spread
    assert "| reuters corrsh 64b rank=10 | 0.500 ± 0.000 (3 seeds) | 4.0 ± 1.0 (3 seeds) | n1 |" in text
    for name in ["precision_vs_bits.png", "axis_rank.png", "time_per_epoch.png", "learning_curves.png"]:
        assert f"]({name})" in text


def test_figures_are_pngs_and_nothing_temporary_is_left(rows, tmp_path):
    written = write_report(rows, tmp_path, name="t", axis_names=AXES, command="x")
    assert set(written) == {"results.parquet", "report.md", "precision_vs_bits.png", "axis_rank.png",
                            "time_per_epoch.png", "learning_curves.png"}
    for name, path in written.items():
        assert path.parent == tmp_path and path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)


def test_a_failed_write_keeps_the_old_report_and_leaves_no_temporaries(rows, tmp_path, monkeypatch):
    write_report(rows, tmp_path, name="old", axis_names=AXES, command="x")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report(rows[:3], tmp_path, name="new", axis_names=AXES, command="y")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_interrupted_file_write_leaves_no_temporary(rows, tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("no rename")

    monkeypatch.setattr(corrhash.atomic.os, "replace", fail)  # the rename that would publish a finished file
    with pytest.raises(OSError, match="no rename"):
        write_report(rows, tmp_path, name="t", axis_names=AXES, command="x")
    assert list(tmp_path.iterdir()) == []


def test_parquet_round_trip(rows, tmp_path):
    rows[0]["epoch_seconds"] = None  # a method without epochs
    rows[0]["val_curve"] = []
    rows[1]["extra_note"] = "kept"  # a key the report does not know becomes a column too
    written = write_report(rows, tmp_path, name="t", axis_names=AXES, command="x")
    back = read_results(written["results.parquet"])
    assert back == [{**r, "extra_note": r.get("extra_note")} for r in rows]
    assert list(back[0])[:6] == ["cell", "dataset", "method", "bits", "seed", "rank"]


def test_a_report_from_one_seed(tmp_path):
    rows = [row("corrsh", 64, 0, 10, 0.80, dataset="20ng-paper"), row("nash", 64, 0, 10, 0.70, dataset="20ng-paper"),
            row("corrsh", 64, 0, 0, 0.60, dataset="20ng-paper", epoch_seconds=None, curve=())]
    text = write_report(rows, tmp_path, name="one", axis_names=AXES, command="x")["report.md"].read_text()
    assert "| corrsh | 0.8000 (1 seed); paper 0.6279 |" in text
    assert "| 64b rank=10 | method | nash | corrsh | +0.1000 | — | 1 | one seed: no verdict |" in text
    assert "larger than the seed spread |" not in text and "within the seed spread |" not in text
    assert "| 20ng-paper corrsh 64b rank=0 | — |" in text  # no epoch time


def test_a_report_without_extra_axes_or_curves(tmp_path):
    rows = [{k: v for k, v in row("lsh", b, s, 0, 0.5 + b / 1000, curve=(), epoch_seconds=None).items() if k != "rank"}
            for b in (16, 32) for s in (0, 1)]
    written = write_report(rows, tmp_path, name="lsh", axis_names=[], command="x")
    assert set(written) == {"results.parquet", "report.md", "precision_vs_bits.png"}
    text = written["report.md"].read_text()
    assert "### reuters\n" in text and "no cell recorded a val curve" in text
    assert "| lsh | 0.5160 ± 0.0000 (2 seeds); paper 0.3215 | 0.5320 ± 0.0000 (2 seeds); paper 0.3862 |" in text


def test_rows_missing_a_key_or_no_rows_are_named(rows, tmp_path):
    del rows[2]["rank"]
    with pytest.raises(CorrhashError, match=f"cell {rows[2]['cell']} lacks rank"):
        write_report(rows, tmp_path, name="t", axis_names=AXES, command="x")
    with pytest.raises(CorrhashError, match="ablation t: no cell results"):
        write_report([], tmp_path, name="t", axis_names=AXES, command="x")
    assert list(tmp_path.iterdir()) == []


def test_a_closed_form_method_is_a_reference_line_in_the_learning_curves(rows):
    # sph fits in closed form: one val precision (epoch 0), no epochs, at 64 bits over two seeds
    rows += [row("sph", 64, s, 10, 0.6, curve=(0.6 + 0.02 * s,), epoch_seconds=None) for s in (0, 1)]
    figure = figures.learning_curves(rows, AXES)
    at64 = next(ax for ax in figure.axes if ax.get_title() == "reuters 64 bits")
    lines = {line.get_label(): line for line in at64.get_lines()}
    legend = [t.get_text() for t in at64.get_legend().get_texts()]
    assert legend == ["sph rank=10 (closed form, no epochs)", "nash rank=10", "corrsh rank=0", "corrsh rank=10"]
    assert all(len(lines[name].get_xdata()) >= 2 for name in legend)  # every entry in the legend is a visible line
    reference = lines["sph rank=10 (closed form, no epochs)"]
    assert list(reference.get_ydata()) == pytest.approx([0.61, 0.61]) and reference.get_linestyle() == "--"
    assert list(reference.get_xdata()) == [1, 2]  # across the trained methods' epochs
    # closed-form methods only: no learning curves to draw
    closed = [r for r in rows if r["method"] == "sph"]
    assert figures.learning_curves(closed, AXES) is None


# ---------------------------------------------------------------- codes

def codes_for(rows, n=60, bits=16):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=n)
    centres = rng.random((4, bits)) < 0.5
    flips = rng.random((n, bits)) < 0.1
    return {r["cell"]: (centres[labels] ^ flips, labels) for r in rows[:2]}


def test_codes_fall_back_to_tsne_without_umap(rows, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError
    figure, method = figures.codes_projection(codes_for(rows), rows, AXES)
    assert method == "t-SNE (scikit-learn, Hamming metric, random_state 0)"
    assert " ".join(figure.get_suptitle().split()) == (
        f"the codes, coloured by label {method}: umap-learn is not installed, so this is not the paper's UMAP; "
        "`pip install corrhash[report]` gives UMAP")
    written = write_report(rows, tmp_path, name="t", axis_names=AXES, command="x", codes=codes_for(rows))
    assert written["umap_codes.png"].read_bytes()[:8] == PNG
    assert (f"- {method} of each cell's codes, coloured by label: umap-learn is not installed, so this is not the "
            "paper's UMAP; `pip install corrhash[report]` gives UMAP") in written["report.md"].read_text()


@pytest.mark.slow  # ~20 s on a busy 2-core machine: importing umap-learn and numba's first compilations
@pytest.mark.slow  # UMAP's numba compilation
def test_codes_with_umap(rows, tmp_path):
    pytest.importorskip("umap")
    written = write_report(rows, tmp_path, name="t", axis_names=AXES, command="x", codes=codes_for(rows))
    assert written["umap_codes.png"].read_bytes()[:8] == PNG
    assert "UMAP (Hamming metric, random_state 0)" in written["report.md"].read_text()
