"""Report pages in a real browser: headless Chromium loads each page from disk; the DOM has the tables, every
image decoded (non-zero natural size), and a full-page screenshot is not blank."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium, open_page
from test_report_page import report_job, train_into_mlflow, tune_into_mlflow

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a real Chromium, and pages with UMAP maps (25 s to set up)

DOM = """JSON.stringify({
  tables: [...document.querySelectorAll('table')].map(t => [...t.querySelectorAll('th')].map(h => h.textContent)),
  images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
  title: document.title, h2: [...document.querySelectorAll('h2')].map(h => h.textContent),
  scripts: document.scripts.length})"""


@pytest.fixture(scope="module")
def pages(shards_synthetic, tmp_path_factory):
    """A training run's page and a tune parent's page, rendered by jobs/report.py (run as a script) from a real
    MLflow store."""
    if chromium() is None:
        reason = "no Chromium on PATH (the Debian package `chromium` provides /usr/bin/chromium)"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("browser")
    uri, run_id = train_into_mlflow(shards_synthetic, folder)
    tune_id = tune_into_mlflow(uri)
    out = {kind: folder / f"{kind}.html" for kind in ("run", "tune")}
    # The training run's page by the job as a script, in a fresh process and another folder: nothing
    # MLflow-global is set up for it (its model is read through --mlflow-uri alone).
    cwd = tmp_path_factory.mktemp("cwd")
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "report.py"), "--run", run_id, "--mlflow-uri", uri,
                           "--out", str(out["run"]), "--no-log-artifact", "--umap-sample", "80"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (cwd / "mlflow.db").exists()
    assert report_job().main(["--run", tune_id, "--mlflow-uri", uri, "--out", str(out["tune"]),
                              "--no-log-artifact"]) == 0
    return out


def not_blank(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.width >= 800 and image.height >= 600
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert colours > 50 and pixels.std() > 10, f"{colours} colours, std {pixels.std():.1f}: a blank page?"
    return image


@pytest.mark.parametrize("kind, tables, images, sections", [
    ("run", ["epoch", "loss", "val_precision"], 2, ["Learning curves", "Codes map", "Final metrics"]),
    ("tune", ["trial", "status", "lr", "rank", "best val precision"], 3, ["Learning curves", "Trials"]),
])
def test_chromium_shows_the_page(pages, kind, tables, images, sections, tmp_path):
    with open_page(pages[kind], tmp_path) as page:
        dom = json.loads(page.evaluate(DOM))
        screenshot = page.screenshot()
    headers = [h for table in dom["tables"] for h in table]
    assert all(name in headers for name in tables), headers
    assert len(dom["tables"]) >= 3 and dom["scripts"] == 0
    assert all(s in dom["h2"] for s in sections), dom["h2"]
    assert len(dom["images"]) == images
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in dom["images"]), dom["images"]
    shot = tmp_path / f"{kind}-page.png"
    shot.write_bytes(screenshot)
    image = not_blank(screenshot)
    assert image.height > 1000  # the whole page, not just the first screen
