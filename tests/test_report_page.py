"""Report pages: the HTML builder on hand-made numbers, and jobs/report.py end to end on a real MLflow store
(SQLite, no server) filled by the plain-process launcher on synthetic shards, and on a tune-shaped parent with
trial child runs recorded through tracking's own functions."""

from __future__ import annotations

import base64
import html
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.ticker import LogFormatterSciNotation, NullFormatter
from PIL import Image

from badinput import job

from corrhash.models import ModelConfig
from corrhash.report.ablation import Code, FigureFile, Heading, Report, Table
from corrhash.report.figures import TSNE, project_codes
from corrhash.report.page import (Codes, PageInput, Trial, build_page, curves_figure, importances,
                                  importances_figure, report_html, trials_figure)
from corrhash.ablate.driver import NODE_TAG
from corrhash.ablate.grid import load_grid
from corrhash.runs.local import run_local
from corrhash.runs.spec import RunSpec
from corrhash.tracking.run_report import PAGE_ARTIFACT
from corrhash.tracking.runs import (ABLATION_TAG, CELL_TAG, client_for, end_run, ensure_experiment, job_run,
                                    log_metrics, publish_model, trial_run)
from corrhash.train import TrainConfig

DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
SPACE = {"lr": "loguniform:1e-4:1e-2", "rank": "randint:0:16", "energy_terms": "choice:true,false"}


def report_job():
    return job("report")


def pngs(page: str) -> list[Image.Image]:
    """Every inline image of a page, decoded (a broken PNG raises)."""
    images = []
    for data in DATA_URI.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        assert image.format == "PNG"
        images.append(image)
    return images


def tables(page: str) -> int:
    return page.count("<table>")


def hand_made_trials(count: int = 8) -> list[Trial]:
    rng = np.random.default_rng(0)
    trials = []
    for i in range(count):
        lr, rank = float(10 ** rng.uniform(-4, -2)), int(rng.integers(0, 17))
        trials.append(Trial(name=f"trial_{i}", run_id=f"r{i}", status="FINISHED", params={
            "lr": lr, "rank": rank, "energy_terms": bool(i % 2)}, best_val=0.3 + 20 * lr + 0.001 * rank,
            epochs=10, stopped_early=i % 3 == 0))
    return trials


# ---- the builder ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # UMAP's numba compilation (16-18 s)
def test_a_run_page_has_its_curves_table_images_and_header():
    curves = {"loss": [(1, 90.0), (2, 80.5), (3, 75.25)], "recon": [(1, 85.0), (2, 77.0), (3, 72.0)],
              "kl": [(1, 5.0), (2, 3.5), (3, 3.25)], "kl_weight": [(1, 0.01), (2, 0.02), (3, 0.03)],
              "val_precision": [(1, 0.4), (2, 0.5), (3, 0.55)]}
    bits = np.random.default_rng(0).random((60, 16)) > 0.5
    page = build_page(PageInput(title="Run ng64", run_id="abc123", mlflow_uri="sqlite:///x/mlflow.db",
                                command="python jobs/report.py --run abc123", curves=curves,
                                metrics={"test_precision_at_100": 0.5123}, params={"model.bits": "16"},
                                codes=Codes(bits, np.arange(60) % 4, ["a", "b", "c", "d"], "hand-made")))
    assert page.startswith("<!DOCTYPE html>") and "<title>Run ng64</title>" in page
    assert "abc123" in page and "sqlite:///x/mlflow.db" in page and "python jobs/report.py --run abc123" in page
    row = re.search(r"<tr><td>3</td>(.*?)</tr>", page).group(1)  # epoch 3: loss recon kl kl_weight val
    assert re.findall(r"<td>([^<]*)</td>", row) == ["75.2500", "72.0000", "3.2500", "0.0300", "0.5500"]
    assert "<td>test_precision_at_100</td><td>0.5123</td>" in page
    images = pngs(page)
    assert len(images) == 2 and all(i.width > 100 and i.height > 100 for i in images)  # curves, codes map
    assert "Codes map" in page and "60 of 60 test documents" in page
    # self-contained: no script, no stylesheet or image fetched from anywhere
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)


def test_the_run_table_has_no_empty_header_and_counts_print_as_integers():
    page = build_page(PageInput(title="r", run_id="abc", mlflow_uri="u", command="c", metrics={
        "best_epoch": 17.0, "epoch": 20.0, "test_precision_at_100": 1.0, "fit_seconds": 3.0, "loss": 75.25}))
    assert "<caption>run</caption><tbody><tr><td>run id</td><td>abc</td></tr>" in page
    assert "<th></th>" not in page
    assert "<td>best_epoch</td><td>17</td>" in page and "<td>epoch</td><td>20</td>" in page
    # not counts: a float stays a float, whatever its value
    assert "<td>test_precision_at_100</td><td>1.0000</td>" in page and "<td>fit_seconds</td><td>3.0000</td>" in page
    assert "<td>loss</td><td>75.2500</td>" in page


def test_the_loss_terms_panel_gives_kl_its_own_axis():
    curves = {"loss": [(1, 400.0), (2, 380.0)], "recon": [(1, 357.0), (2, 340.0)], "kl": [(1, 43.0), (2, 40.0)],
              "val_precision": [(1, 0.4), (2, 0.5)]}
    figure = curves_figure(curves)
    losses, precision, kl = figure.axes  # two panels, then the loss panel's twin
    assert kl.get_shared_x_axes().joined(kl, losses) and kl.yaxis.get_label_position() == "right"
    assert [line.get_label() for line in losses.get_lines()] == ["loss", "recon"]
    assert [list(line.get_ydata()) for line in kl.get_lines()] == [[43.0, 40.0]]
    assert kl.get_ylim()[1] < 100 < losses.get_ylim()[0]  # KL spans its own axis, not a flat line at the bottom
    assert [t.get_text() for t in losses.get_legend().get_texts()] == ["loss", "recon", "kl (right axis)"]
    assert [line.get_label() for line in precision.get_lines()] == ["val_precision"]
    # KL alone needs no second axis
    assert len(curves_figure({"kl": curves["kl"]}).axes) == 1


def test_a_log_scale_param_is_labelled_at_powers_of_ten_only():
    trials = [Trial(f"t{i}", f"r{i}", "FINISHED", {"lr": lr, "rank": i}, 0.5 + 100 * lr, 10)
              for i, lr in enumerate([2e-4, 3e-4, 4e-4, 6e-4])]  # within one decade: the F14 screenshot
    figure = trials_figure(trials, {"lr": "loguniform:1e-4:1e-3", "rank": "randint:0:16"})
    lr, rank = figure.axes
    assert lr.get_xscale() == "log" and rank.get_xscale() == "linear"
    assert isinstance(lr.xaxis.get_major_formatter(), LogFormatterSciNotation)
    assert lr.xaxis.get_major_formatter().labelOnlyBase
    assert isinstance(lr.xaxis.get_minor_formatter(), NullFormatter)
    figure.draw_without_rendering()
    low, high = lr.get_xlim()
    shown = [t.get_text() for t in lr.get_xticklabels(which="both") if t.get_text() and low <= t.get_position()[0]
             <= high]
    assert shown == ["$\\mathdefault{10^{-4}}$", "$\\mathdefault{10^{-3}}$"]  # the searched range's decades


def test_importances_from_few_trials_carry_a_caveat():
    few = build_page(PageInput(title="t", run_id="p", mlflow_uri="u", command="c", kind="tune", space=SPACE,
                               trials=hand_made_trials(4)))
    assert "over 4 trials&#x27; best val precision (n &lt; 10: indicative only)" in few
    many = build_page(PageInput(title="t", run_id="p", mlflow_uri="u", command="c", kind="tune", space=SPACE,
                                trials=hand_made_trials(12)))
    assert "over 12 trials" in many and "indicative only" not in many
    values = importances(hand_made_trials(4), SPACE)
    assert importances_figure(values, 4).axes[0].get_title() == "over 4 trials (n < 10: indicative only)"
    assert importances_figure(values, 12).axes[0].get_title() == "over 12 trials"


def clustered_codes(n: int = 120, bits: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Codes around 4 random centres (each bit flipped with probability 0.05) and their centre's label."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=n)
    return (rng.random((4, bits)) < 0.5)[labels] ^ (rng.random((n, bits)) < 0.05), labels


def test_without_umap_the_codes_map_is_scikit_learns_tsne_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError, as without corrhash[report]
    codes, labels = clustered_codes()
    xy, method = project_codes(codes)
    assert method == TSNE == "t-SNE (scikit-learn, Hamming metric, random_state 0)"
    assert xy.shape == (120, 2) and np.isfinite(xy).all()
    # a neighbourhood map: each code's nearest point on the map has its label
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.diag(np.full(len(xy), np.inf))
    assert np.mean(labels[distances.argmin(axis=1)] == labels) > 0.95
    assert project_codes(codes[:2])[0].shape == (2, 2)  # too few points to embed: still two coordinates each
    page = build_page(PageInput(title="r", run_id="r", mlflow_uri="u", command="c",
                                codes=Codes(codes, labels, None, "hand-made")))
    assert ("t-SNE (scikit-learn, Hamming metric, random_state 0): umap-learn is not installed, so this is not "
            "the paper&#x27;s UMAP; `pip install corrhash[report]` gives UMAP") in page
    assert len(pngs(page)) == 1


def test_text_from_a_run_is_escaped():
    evil = '<script>alert("x")</script>&'
    page = build_page(PageInput(title=evil, run_id=evil, mlflow_uri=evil, command=evil, params={evil: evil},
                                notes=[evil]))
    assert "<script" not in page
    assert page.count(html.escape(evil)) >= 5


def test_a_tune_page_has_scatters_importances_and_the_trials_table():
    trials = hand_made_trials()
    page = build_page(PageInput(title="Tune t", run_id="p", mlflow_uri="u", command="c", kind="tune",
                                space=SPACE, trials=trials))
    assert "PED-ANOVA" in page and "parameter importances" in page
    assert len(pngs(page)) == 2  # the scatters and the importances (no curves, no codes)
    best = max(trials, key=lambda t: t.best_val)
    first_row = re.search(r"<caption>trials, best first</caption>.*?<tbody><tr>(.*?)</tr>", page).group(1)
    assert f"<td>{best.name}</td>" in first_row and f"<td>{best.best_val:.4f}</td>" in first_row
    assert page.count("<td>trial_") == len(trials)


def test_importances_rank_the_param_that_decides_the_value_first():
    trials = hand_made_trials()
    values = importances(trials, SPACE)
    assert set(values) == set(SPACE) and abs(sum(values.values()) - 1) < 1e-6
    assert max(values, key=values.get) == "lr"  # best_val is 0.3 + 20 lr + 0.001 rank
    assert importances(trials[:1], SPACE) == {}


def test_an_ablation_report_becomes_escaped_tables_and_inline_images():
    png = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(png, format="PNG")
    report = Report([Heading("Ablation <x>", 1), Code("python jobs/ablate.py --grid g.yaml"), Heading("Test", 2),
                     Table(["method", "16 bits"], [["corrsh & co", "0.5 ± 0.1 (2 seeds)"]], [False, True]),
                     FigureFile("f.png", "fig")], {"f.png": png.getvalue()})
    assert report.markdown() == (
        "# Ablation <x>\n\n```\npython jobs/ablate.py --grid g.yaml\n```\n\n## Test\n\n"
        "| method | 16 bits |\n|---|---:|\n| corrsh & co | 0.5 ± 0.1 (2 seeds) |\n\n"
        "- fig: [f.png](f.png)\n\n![f.png](f.png)\n")
    page = report_html(report)
    assert "<h2>Ablation &lt;x&gt;</h2>" in page and "<pre>python jobs/ablate.py --grid g.yaml</pre>" in page
    assert "<th>method</th><th>16 bits</th>" in page and "<td>corrsh &amp; co</td>" in page
    assert "---" not in page and len(pngs(page)) == 1 and "<p>• fig: f.png</p>" in page


def test_an_ablation_page_inlines_the_ablation_report():
    rows = [{"cell": f"c{m}{s}", "dataset": "text", "method": m, "bits": 16, "seed": s, "rank": 5,
             "val_precision": 0.5, "test_precision": 0.4 + 0.1 * (m == "corrsh") + 0.01 * s,
             "test_precision_ordered": 0.4, "best_epoch": 2, "epochs_run": 3, "fit_seconds": 1.0,
             "epoch_seconds": 0.3, "val_curve": [0.3, 0.4, 0.5], "node": "n1"}
            for m in ("nash", "corrsh") for s in (0, 1)]
    from corrhash.report.page import AblationInput

    page = build_page(PageInput(title="Ablation a", run_id="p", mlflow_uri="u", command="c", kind="ablation",
                                ablation=AblationInput(name="a", rows=rows, axis_names=["rank"])))
    assert "Test precision@100" in page and "Paired comparisons" in page and "<td>corrsh</td>" in page
    assert tables(page) >= 4 and len(pngs(page)) >= 2  # precision vs bits, time per epoch, learning curves


# ---- end to end on a real MLflow store --------------------------------------------------------------------------


def train_into_mlflow(shards: Path, folder: Path, name: str = "report-e2e") -> tuple[str, str]:
    """A training run recorded the way the launchers record one: job_run, the plain-process launcher with its
    epochs logged (as an ablation cell does), then publish_model. Returns (tracking URI, run id)."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = client_for(uri)
    experiment = ensure_experiment(client, "corrhash-report-test")
    spec = RunSpec(str(shards), ModelConfig(name="corrsh", bits=16, hidden=100), TrainConfig(epochs=3, device="cpu"))
    params = {"model": spec.model.to_dict(), "train": spec.train.to_dict(), "data": spec.data}
    with job_run(client, experiment, name, params, {"data.path": spec.data}) as (run_id, _):
        results = run_local(spec, folder / "run", on_epoch=lambda m: log_metrics(client, run_id, m, step=m["epoch"]))
        publish_model(client, uri, run_id, folder / "run" / "model", results)
    return uri, run_id


def tune_into_mlflow(uri: str, name: str = "report-tune") -> str:
    """A tune-shaped parent: the space as params and one child run per trial with per-epoch metrics, through
    the same tracking functions the Tune callbacks call. Returns the parent's run id."""
    client = client_for(uri)
    experiment = ensure_experiment(client, "corrhash-report-test")
    with job_run(client, experiment, name, {"space": SPACE, "num_samples": 8}, {}) as (parent, _):
        for i, trial in enumerate(hand_made_trials()):
            run_id = trial_run(client, experiment, parent, f"t{i}", f"trial_{i}", {
                "model": {"rank": trial.params["rank"], "energy_terms": trial.params["energy_terms"]},
                "train": {"lr": trial.params["lr"]}})
            for epoch in range(1, 4):
                value = trial.best_val * epoch / 3
                log_metrics(client, run_id, {"epoch": epoch, "loss": 100 - epoch, "recon": 90 - epoch, "kl": 10.0,
                                             "kl_weight": 0.01 * epoch, "val_precision": value,
                                             "best_val_precision": value}, step=epoch)
            end_run(client, run_id, "FINISHED", {"corrhash.stopped_by": "scheduler"} if trial.stopped_early else None)
    return parent


@pytest.fixture(scope="module")
def recorded(shards_synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-mlflow")
    uri, run_id = train_into_mlflow(shards_synthetic, folder)
    return {"uri": uri, "run_id": run_id, "tune": tune_into_mlflow(uri), "folder": folder}


@pytest.mark.slow  # UMAP's numba compilation (16-18 s)
def test_report_job_renders_a_training_run_and_logs_it(recorded, tmp_path, capsys):
    out = tmp_path / "page.html"
    code = report_job().main(["--run", recorded["run_id"], "--mlflow-uri", recorded["uri"], "--out", str(out),
                              "--umap-sample", "60"])
    assert code == 0, capsys.readouterr().err
    page = out.read_text()
    client = client_for(recorded["uri"])
    run = client.get_run(recorded["run_id"])
    epochs = sorted(client.get_metric_history(run.info.run_id, "val_precision"), key=lambda m: m.step)
    assert len(epochs) == 3 and f"<td>{epochs[-1].value:.4f}</td>" in page
    assert "Codes map" in page and "60 of 80 test documents" in page and "UMAP" in page
    assert len(pngs(page)) == 2 and "Learning curves" in page and "test_precision_at_100" in page
    assert f"--run {recorded['run_id']}" in page and html.escape(recorded["uri"]) in page
    downloaded = Path(client.download_artifacts(run.info.run_id, PAGE_ARTIFACT, str(tmp_path / "dl")))
    assert downloaded.read_bytes() == out.read_bytes()
    err = capsys.readouterr().err
    assert "drawing the page" in err and f"logged to run {recorded['run_id']}" in err


def test_report_job_finds_a_tune_parent_by_name(recorded, tmp_path):
    out = tmp_path / "tune.html"
    assert report_job().main(["--run", "report-tune", "--mlflow-uri", recorded["uri"], "--out", str(out),
                              "--no-log-artifact"]) == 0
    page = out.read_text()
    assert "<h1>Tune report-tune</h1>" in page and "PED-ANOVA" in page and page.count("<td>trial_") == 8
    assert "Curves of the best trial" in page and len(pngs(page)) == 3  # curves, scatters, importances
    assert "no codes map: the run records no data folder" in page  # a tune-shaped parent without a model
    assert page.count("<td>yes</td>") == sum(t.stopped_early for t in hand_made_trials())
    client = client_for(recorded["uri"])
    assert not [a for a in client.list_artifacts(recorded["tune"]) if a.path == "report"]


def test_report_job_names_a_bad_option(recorded, tmp_path, capsys):
    job = report_job()
    assert job.main(["--run", "no-such-run", "--mlflow-uri", recorded["uri"], "--out", str(tmp_path / "x")]) == 2
    assert "--run no-such-run" in capsys.readouterr().err
    assert job.main(["--run", "x", "--umap-sample", "1", "--mlflow-uri", recorded["uri"]]) == 2
    assert "--umap-sample 1" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert job.main(["--run", "x", "--mlflow-uri", missing]) == 2
    assert f"--mlflow-uri {missing}: no MLflow database" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    assert not (tmp_path / "x").exists()
    # A run logged through a server keeps its artifacts at mlflow-artifacts:/, out of a database URI's reach
    # (reliability review t4, R7: an MlflowException traceback).
    client = client_for(recorded["uri"])
    served = client.create_experiment("via-a-server", artifact_location="mlflow-artifacts:/via-a-server")
    run_id = client.create_run(served).info.run_id
    assert job.main(["--run", run_id, "--mlflow-uri", recorded["uri"], "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert f"--run {run_id}: its artifacts are kept by the MLflow server" in err and "Traceback" not in err


def ablation_into_mlflow(uri: str, shards: Path, folder: Path, name: str = "tiny-ablation") -> str:
    """An ablation-shaped parent: its grid file as the `grid/` artifact and one FINISHED child run per cell with
    the tags and metric names ablate/driver.py's run_cell records (hand-made values: a real cell needs Ray).
    Returns the parent's run id."""
    grid_path = folder / f"{name}.yaml"
    grid_path.write_text(yaml.safe_dump({"name": name, "description": "nash against corrsh, <tiny>",
                                         "data": {"syn": str(shards)}, "methods": {"nash": {}, "corrsh": {}},
                                         "bits": [8], "seeds": [0, 1], "axes": {"dropout": [0.1, 0.2]}}))
    grid = load_grid(grid_path)
    client = client_for(uri)
    experiment = ensure_experiment(client, "corrhash-report-test")
    with job_run(client, experiment, name, {"grid": str(grid_path), "cells": len(grid.cells)},
                 {ABLATION_TAG: name}) as (parent, _):
        client.log_artifact(parent, str(grid_path), "grid")
        for i, cell in enumerate(grid.cells):
            tags = {"mlflow.parentRunId": parent, CELL_TAG: cell.id, ABLATION_TAG: name, NODE_TAG: "node-a"}
            run_id = client.create_run(experiment, run_name=cell.label(), tags=tags).info.run_id
            best = 0.3 + 0.05 * (cell.model.name == "corrsh") + 0.01 * i
            for epoch in (1, 2, 3):
                log_metrics(client, run_id, {"epoch": epoch, "val_precision": best * epoch / 3}, step=epoch)
            log_metrics(client, run_id, {"best_val_precision_at_100": best, "best_epoch": 3,
                                         "test_precision_at_100": best - 0.02, "test_precision_ordered_at_100": best,
                                         "fit_seconds": 2.0, "mean_epoch_seconds": 0.5}, step=0)
            client.set_terminated(run_id, "FINISHED")
    return parent


def test_report_job_renders_an_ablation_parent_from_its_cells(recorded, shards_synthetic, tmp_path):
    parent = ablation_into_mlflow(recorded["uri"], shards_synthetic, tmp_path)
    out = tmp_path / "ablation.html"
    assert report_job().main(["--run", "tiny-ablation", "--mlflow-uri", recorded["uri"], "--out", str(out)]) == 0
    page = out.read_text()
    assert "<h1>Ablation tiny-ablation</h1>" in page and "nash against corrsh, &lt;tiny&gt;" in page
    assert "<h3>Test precision@100</h3>" in page and "<h4>syn dropout=0.1</h4>" in page  # paper-shaped tables
    # corrsh at dropout 0.1: cells 0 and 2 of the grid, test precision 0.33 and 0.35 (see ablation_into_mlflow)
    assert "<td>corrsh</td><td>0.3400 ± 0.0141 (2 seeds)</td>" in page
    assert "<td>dropout</td><td>0.1</td><td>0.2</td>" in page  # a paired comparison along the axis
    assert len(pngs(page)) >= 3 and "Codes map" not in page  # codes are drawn for 20ng 128-bit cells only
    client = client_for(recorded["uri"])
    downloaded = client.download_artifacts(parent, PAGE_ARTIFACT, str(tmp_path / "dl"))
    assert Path(downloaded).read_bytes() == out.read_bytes()
