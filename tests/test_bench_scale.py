"""`jobs/bench.py scale` end to end on tiny sizes (the smoke test of an entry point): every section it is asked
for writes rows with plausible numbers, as JSON and as a markdown table."""

from __future__ import annotations

import json

import pytest

from badinput import job


@pytest.mark.slow
def test_scale_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "out"
    code = job("bench").main(["scale", "--sizes", "1500", "3000", "--code-sizes", "20000", "--no-ray",
                              "--sections", "prepare", "train", "search", "--workdir", str(tmp_path / "work"),
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
    assert {(r["codes"], r["n"]) for r in report["search"]} == {("random", 20000), ("clustered", 20000)}
    assert all(0 <= r["recall_at_k"] <= 1 and r["flat_qps"] > 0 and r["ivf_qps"] > 0 for r in report["search"])
    table = (out / "tiny.md").read_text()
    assert "## Preparation" in table and "## Training" in table and "## Search" in table
