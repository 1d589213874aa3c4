"""`python -m bench.run scale` end to end on tiny sizes (the smoke test of an entry point): every section it is asked
for writes rows with plausible numbers, as JSON and as a markdown table."""

from __future__ import annotations

import json

import pytest

from bench.run import main as bench_main


@pytest.mark.slow
def test_scale_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "out"
    code = bench_main(["scale", "--sizes", "1500", "3000", "--code-sizes", "20000", "--no-ray",
                       "--sections", "prepare", "train", "stream", "search", "--stream-buffer", "400", "--search-model-n", "3000", "--search-model-epochs", "1", "--workdir", str(tmp_path / "work"),
                       "--out", str(out), "--name", "tiny"])
    assert code == 0
    report = json.loads((out / "tiny.json").read_text())
    assert not report["errors"]
    assert [r["n_docs"] for r in report["prepare"]] == [1500, 3000]
    assert all(r["mode"] == "single" and r["docs_per_s"] > 0 and r["content_hash"] for r in report["prepare"])
    assert report["prepare"][0]["cost_per_doc_vs_smallest"] == pytest.approx(1.0)
    assert [r["n_docs"] for r in report["train"]] == [1500, 3000]
    for row in report["train"]:
        assert row["train_docs_per_s"] > 0 and row["eval_all_queries"] == row["val_docs"]
        assert row["eval_sample_queries"] == min(row["val_docs"], 1000)
    stream = report["stream"]
    assert [(r["n_docs"], r["mode"], r["streamed"]) for r in stream["rows"]] == [
        (1500, "never", False), (1500, "always", True), (3000, "never", False), (3000, "always", True)]
    for row in stream["rows"]:
        assert row["returncode"] == 0 and row["docs_per_s"] > 0 and row["peak_rss_mib"] > 0
        assert row["most_rows_held"] == row["train_docs"] or row["streamed"]  # one 2000-row file here: no less
    # At a few thousand documents torch's own memory hides the split's, so no limit fits between the two peaks.
    assert stream["limited"] == [] and stream["limited_skipped"]
    model_rows = [r for r in report["search"] if r["codes"] == "CorrSH model, 1 epoch"]
    assert model_rows and all(r["n"] == report["train"][1]["train_docs"] for r in model_rows)  # the database: train
    assert {(r["codes"], r["n"]) for r in report["search"] if r not in model_rows} == {("random", 20000),
                                                                                         ("clustered", 20000)}
    assert all(0 <= r["recall_at_k"] <= 1 and r["flat_qps"] > 0 and r["ivf_qps"] > 0 for r in report["search"])
    table = (out / "tiny.md").read_text()
    assert "## Preparation" in table and "## Training" in table and "## Search" in table
    assert "## Training from shards larger than memory" in table and "No memory-limited runs" in table
