"""Choosing the search index's kind (flat, ivf, auto) from HashingModel.index, index_for and the jobs' --index-kind,
and IVF calibrated on real queries (a shard folder's val split) rather than on the index's own codes.

A tiny model is trained here on the synthetic shards (no Ray, no MLflow): every index is the real model's codes.
"""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

import corrhash
import corrhash.retrieval.index as index_module
from badinput import assert_named_error, run_job, run_job_output
from corrhash.artifact import save_model
from corrhash.data import TfidfShards
from corrhash.errors import DataError
from corrhash.models import ModelConfig
from corrhash.retrieval import hamming_topk
from corrhash.serve.app import Limits, Payload, PayloadSearcher
from corrhash.serve.corpus import index_for
from corrhash.train import TrainConfig, fit

GIVEN = "queries given at build time"  # what HammingIndex records as the sample of given calibration queries
OWN = "codes of the index itself"


@pytest.fixture(scope="module")
def trained(shards_synthetic, tmp_path_factory):
    """A 32-bit model of the synthetic shards, the shards' splits, and texts of the train split's documents."""
    folder = tmp_path_factory.mktemp("index-kind")
    shards = TfidfShards(shards_synthetic)
    train, val = shards.split("train"), shards.split("val")
    result = fit(ModelConfig(name="nash", bits=32, hidden=32), TrainConfig(epochs=2, batch_size=40, eval_k=10),
                 train, val=val)
    vocab = json.loads((shards_synthetic / "vocab.json").read_text())
    model_dir = save_model(folder / "model", result.model, vocab, {"label_names": shards.label_names})
    rows = [json.loads(line) for line in (shards_synthetic.parent / "corpus.jsonl").read_text().splitlines()]
    queries = folder / "queries.txt"
    queries.write_text("\n".join([row["text"] for row in rows if row["split"] == "train"][:6]) + "\n")
    return SimpleNamespace(dir=model_dir, model=corrhash.load(model_dir), shards=shards_synthetic, train=train,
                           val=val, queries=queries, root=folder)


def recall_of(index) -> dict:
    """The calibrated recall an index records, whether IVF was kept or rejected (auto)."""
    info = index.search_info
    return info["recall"] if info["kind"] == "ivf" else info["ivf_rejected"]["recall"]


# ---- HashingModel.index ----------------------------------------------------------------------------------------


def test_flat_stays_flat_where_auto_would_consider_ivf(trained, monkeypatch):
    monkeypatch.setattr(index_module, "AUTO_IVF_FROM", 100)  # the 320 train documents are "large" now
    auto = trained.model.index(features=trained.train.features, ids=trained.train.doc_ids)
    assert auto.search_info["kind"] in ("flat", "ivf") and recall_of(auto)  # auto calibrated IVF ...
    flat = trained.model.index(features=trained.train.features, ids=trained.train.doc_ids, kind="flat")
    assert flat.kind == "flat" and flat.search_info == {}  # ... flat did not even try
    codes = trained.model.encode_features(trained.train.features)
    distances, positions = hamming_topk(codes[:20], codes, 10, backend="faiss")
    found, found_distances = flat.search(codes[:20], 10)
    np.testing.assert_array_equal(found_distances, distances)
    np.testing.assert_array_equal(found, trained.train.doc_ids[positions])


def test_the_old_positional_call_still_indexes_texts(trained):
    index = trained.model.index(["t0w1 t0w2 common1", "t3w4 t3w5 common2"], [7, 9])
    assert index.kind == "flat" and index.ids.tolist() == [7, 9]
    assert index.meta == {"model": {"weights_sha256": trained.model.weights_sha256,
                                    "vocab_sha256": trained.model.vocab_sha256, "uri": str(trained.dir)}}


def test_ivf_on_a_small_corpus_finds_planted_duplicates_exactly(trained):
    """Each val document planted into the train documents: its query finds the copy, and every other document of
    its code, at distance 0, as exact search does (identical codes share an IVF list, the first one probed)."""
    val = trained.val
    features = sp.vstack([trained.train.features, val.features], format="csr")
    ids = np.concatenate([trained.train.doc_ids, 100_000 + np.arange(len(val))])
    index = trained.model.index(features=features, ids=ids, kind="ivf")
    assert index.kind == "ivf" and index.search_info["nlist"] > 1
    queries = trained.model.encode_features(val.features)
    exact_distances, exact_positions = hamming_topk(queries, index.codes, len(index), backend="faiss")
    ties = int((exact_distances == 0).sum(axis=1).max())  # the most documents at distance 0 from one query
    found, distances = index.search(queries, ties)
    for j in range(len(val)):
        at_zero = set(found[j][distances[j] == 0].tolist())
        assert 100_000 + j in at_zero
        assert at_zero == set(ids[exact_positions[j][exact_distances[j] == 0]].tolist())


@pytest.mark.parametrize("given", ["codes", "features", "texts"])
def test_calibration_queries_are_the_ones_recorded(trained, given, tmp_path):
    val = trained.val.sample(50, seed=1)
    queries = {"codes": lambda: trained.model.encode_features(val.features), "features": lambda: val.features,
               "texts": lambda: ["t0w1 t0w2 common3"] * 50}[given]()
    index = trained.model.index(features=trained.train.features, kind="ivf", calibration_queries=queries, seed=3)
    recall = index.search_info["recall"]
    assert (recall["sample"], recall["queries"], recall["seed"]) == (GIVEN, 50, 3)
    assert recall["value"] >= recall["target"]
    sidecar = json.loads(index.save(tmp_path / "i.npz").with_suffix(".json").read_text())
    assert sidecar["search"]["recall"] == recall  # the recall on those queries is what the file keeps
    default = trained.model.index(features=trained.train.features, kind="ivf")
    assert default.search_info["recall"]["sample"] == OWN


def test_calibration_queries_of_another_kind_are_refused(trained):
    with pytest.raises(TypeError, match="calibration_queries"):
        trained.model.index(features=trained.train.features, kind="ivf", calibration_queries=42)


# ---- index_for: a corpus's kind, a shard folder's val split as calibration queries, a saved index's kind ----------


def test_a_shard_folders_ivf_is_calibrated_on_its_val_split(trained):
    index, shown = index_for(trained.model, None, trained.shards, "train", kind="ivf")
    recall = index.search_info["recall"]
    assert index.kind == "ivf" and len(index) == len(trained.train) and shown
    assert (recall["sample"], recall["queries"]) == (GIVEN, len(trained.val))  # 80 val documents, all of them
    indexing_val, _ = index_for(trained.model, None, trained.shards, "val", kind="ivf")
    assert indexing_val.search_info["recall"]["sample"] == OWN  # val queries would be the index's own codes


def test_auto_calibrates_on_val_only_where_it_considers_ivf(trained, monkeypatch):
    small, _ = index_for(trained.model, None, trained.shards, "train")
    assert small.kind == "flat" and small.search_info == {}
    monkeypatch.setattr(index_module, "AUTO_IVF_FROM", 100)
    large, _ = index_for(trained.model, None, trained.shards, "train")
    assert (recall_of(large)["sample"], recall_of(large)["queries"]) == (GIVEN, len(trained.val))
    assert large.describe().startswith("ivf index probing" if large.kind == "ivf" else "flat index, exact (auto: ivf")
    flat, _ = index_for(trained.model, None, trained.shards, "train", kind="flat")
    assert flat.search_info == {}


def test_a_saved_index_of_another_kind_is_refused_naming_the_file_and_both_kinds(trained, tmp_path):
    path = trained.model.index(features=trained.train.features, kind="ivf").save(tmp_path / "ivf.npz")
    with pytest.raises(DataError, match="ivf") as caught:
        index_for(trained.model, path, None, kind="flat")
    assert str(path) in str(caught.value) and "--index-kind flat" in str(caught.value)
    for kind in ("ivf", "auto"):
        assert index_for(trained.model, path, None, kind=kind)[0].kind == "ivf"


# ---- jobs/search.py and jobs/serve.py --index-kind ---------------------------------------------------------------


def search(trained, capsys, *argv) -> tuple[int, list[dict], str]:
    status, stdout, stderr = run_job_output("search", ["--model", trained.dir, "--queries", trained.queries,
                                                       "--k", 5, *argv], capsys)
    return status, [json.loads(line) for line in stdout.splitlines()], stderr


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_search_job_builds_the_kind_asked_for_and_loads_it_back(trained, kind, tmp_path, capsys):
    out = tmp_path / f"{kind}.npz"
    status, answers, stderr = search(trained, capsys, "--corpus", trained.shards, "--index-kind", kind,
                                     "--index-out", out)
    assert status == 0, stderr
    assert f"{kind} index" in stderr
    assert len(answers) == 6 and all(len(a["hits"]) == 5 for a in answers)
    assert all(a["hits"][0]["distance"] == 0 for a in answers)  # each query is a train document's text
    sidecar = json.loads(out.with_suffix(".json").read_text())
    if kind == "flat":
        assert "search" not in sidecar
    else:
        assert sidecar["search"]["kind"] == "ivf" and sidecar["search"]["recall"]["sample"] == GIVEN
    status, loaded, stderr = search(trained, capsys, "--index", out, "--index-kind", kind)
    assert status == 0, stderr
    assert [[h["distance"] for h in a["hits"]] for a in loaded] == [[h["distance"] for h in a["hits"]] for a in answers]


def test_a_mismatched_index_kind_exits_2_naming_the_index(trained, tmp_path, capsys):
    saved = tmp_path / "flat.npz"
    status, _, stderr = search(trained, capsys, "--corpus", trained.shards, "--index-kind", "flat",
                               "--index-out", saved)
    assert status == 0, stderr
    status, answers, stderr = search(trained, capsys, "--index", saved, "--index-kind", "ivf")
    assert_named_error(status, stderr, saved, "flat", "--index-kind ivf")
    assert answers == []
    assert_named_error(*run_job("serve", ["--model", trained.dir, "--index", saved, "--index-kind", "ivf"], capsys),
                       saved, "flat", "--index-kind ivf")  # before Ray is touched


def test_an_unknown_index_kind_is_refused_by_both_jobs(trained, capsys):
    for job in ("search", "serve"):
        status, stderr = run_job(job, ["--model", trained.dir, "--corpus", trained.shards, "--index-kind", "hnsw"],
                                 capsys)
        assert status == 2 and "--index-kind" in stderr and "hnsw" in stderr


# ---- serving: a replica searches the index the driver built ---------------------------------------------------------


def test_a_served_payload_carries_the_index_as_built(trained):
    index, shown = index_for(trained.model, None, trained.shards, "train", kind="ivf")
    payload = pickle.loads(pickle.dumps(Payload.of(str(trained.dir), trained.model, index, shown)))  # as Ray ships it
    searcher = PayloadSearcher(payload, Limits())
    assert searcher.index.kind == "ivf" and searcher.index.search_info == index.search_info
    answer = searcher.search({"texts": ["t0w1 t0w2 common3"], "k": 3})
    expected_ids, expected_distances = index.search(trained.model.encode(["t0w1 t0w2 common3"]), 3)
    assert [h["id"] for h in answer["results"][0]["hits"]] == expected_ids[0].tolist()
    assert [h["distance"] for h in answer["results"][0]["hits"]] == expected_distances[0].tolist()
