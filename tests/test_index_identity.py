"""A saved index knows the model that built it (review F1) and what its hits show (F12).

Two tiny 16-bit models of the synthetic shards, A and B (same bits, other seeds: other weights), no Ray, no
MLflow (tests/test_bad_input_search.py checks what a registered model records). An index saved with A is
refused with B (exit 2, naming the file and both models) unless --allow-other-model; with A, --index answers
exactly as --corpus answers, labels or text included.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import corrhash
from badinput import assert_named_error, job, run_job, run_job_output
from corrhash.artifact import save_model, weights_sha256
from corrhash.data import TfidfShards
from corrhash.errors import DataError
from corrhash.models import ModelConfig
from corrhash.serve.corpus import index_for
from corrhash.retrieval.index import HammingIndex, OtherModelError
from corrhash.train import TrainConfig, fit


@pytest.fixture(scope="module")
def models(shards_synthetic, tmp_path_factory):
    """Models A and B (16 bits each, seeds 0 and 1) of the synthetic shards, the shards, a .jsonl corpus of
    the train split's texts and a file of six queries (train texts)."""
    root = tmp_path_factory.mktemp("index-identity")
    shards = TfidfShards(shards_synthetic)
    vocab = json.loads((shards_synthetic / "vocab.json").read_text())
    trained = {}
    for name, seed in (("a", 0), ("b", 1)):
        result = fit(ModelConfig(name="nash", bits=16, hidden=16),
                     TrainConfig(epochs=2, batch_size=40, eval_k=10, seed=seed),
                     shards.split("train"), val=shards.split("val"))
        trained[name] = (save_model(root / f"model-{name}", result.model, vocab,
                                    {"label_names": shards.label_names}), weights_sha256(result.model))
    rows = [json.loads(line) for line in (shards_synthetic.parent / "corpus.jsonl").read_text().splitlines()]
    texts = [row["text"] for row in rows if row["split"] == "train"]
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    queries = root / "queries.txt"
    queries.write_text("\n".join(texts[:6]) + "\n")
    return SimpleNamespace(a=trained["a"][0], a_hash=trained["a"][1], b=trained["b"][0], b_hash=trained["b"][1],
                           shards=shards_synthetic, corpus=corpus, queries=queries, root=root)


def search(capsys, model, *argv) -> tuple[int, list[dict], str]:
    status, stdout, stderr = run_job_output("search", ["--model", model, *argv], capsys)
    return status, [json.loads(line) for line in stdout.splitlines()], stderr


def saved(models, tmp_path, capsys, corpus=None, model=None) -> tuple:
    """(path, the answers of --corpus) of an index hashed from `corpus` (default: the shards) by `model` (A)."""
    path = tmp_path / "index.npz"
    status, answers, stderr = search(capsys, model or models.a, "--corpus", corpus or models.shards,
                                     "--queries", models.queries, "--k", 5, "--index-out", path)
    assert status == 0, stderr
    return path, answers


# ---- the identity ----------------------------------------------------------------------------------------------


def test_the_weights_hash_is_of_the_content(models, tmp_path):
    """The same weights hash alike wherever the folder is and however they were loaded; other weights do not."""
    a = corrhash.load(models.a)
    assert a.weights_sha256 == models.a_hash  # of the trained model in memory, before it was saved
    shutil.copytree(models.a, tmp_path / "elsewhere")
    assert corrhash.load(tmp_path / "elsewhere").weights_sha256 == models.a_hash
    assert models.b_hash != models.a_hash and corrhash.load(models.b).bits == a.bits
    assert len(models.a_hash) == 64 and int(models.a_hash, 16) >= 0


def test_a_saved_index_records_its_model(models, tmp_path, capsys):
    path, _ = saved(models, tmp_path, capsys)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    vocab_sha256 = hashlib.sha256((models.a / "vocab.json").read_bytes()).hexdigest()
    assert sidecar["model"] == {"weights_sha256": models.a_hash, "vocab_sha256": vocab_sha256, "uri": str(models.a)}
    assert HammingIndex.load(path).built_with(corrhash.load(models.a).identity)
    assert not HammingIndex.load(path).built_with(corrhash.load(models.b).identity)


# ---- another model: exit 2, or a warning with --allow-other-model ---------------------------------------------------


def test_an_index_searched_with_another_model_exits_2_naming_the_file_and_both_models(models, tmp_path, capsys):
    path, _ = saved(models, tmp_path, capsys)
    status, answers, stderr = search(capsys, models.b, "--index", path, "--queries", models.queries)
    assert_named_error(status, stderr, path, models.a, models.b, models.a_hash[:12], models.b_hash[:12],
                       "--allow-other-model", "--index-out")
    assert answers == []
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr
    with pytest.raises(OtherModelError, match="built with the model"):
        index_for(corrhash.load(models.b), path, None)


def test_allow_other_model_searches_it_with_a_warning(models, tmp_path, capsys):
    path, _ = saved(models, tmp_path, capsys)
    status, answers, stderr = search(capsys, models.b, "--index", path, "--queries", models.queries, "--k", 5,
                                     "--allow-other-model")
    assert status == 0, stderr
    assert "warning: " in stderr and str(path) in stderr and "--allow-other-model" in stderr
    assert len(answers) == 6 and all(len(a["hits"]) == 5 for a in answers)
    b = corrhash.load(models.b)  # B's codes of the queries against A's codes of the documents, as asked
    ids, distances = HammingIndex.load(path).search(b.encode(models.queries.read_text().splitlines()), 5)
    assert [[h["distance"] for h in a["hits"]] for a in answers] == distances.tolist()
    warned = []
    index, shown = index_for(b, path, None, allow_other_model=True, warn=warned.append)
    assert len(warned) == 1 and str(models.a) in warned[0] and len(index) == len(shown)


def test_the_serve_job_refuses_another_model_before_ray_and_takes_the_override(models, tmp_path, capsys):
    path, _ = saved(models, tmp_path, capsys)
    assert_named_error(*run_job("serve", ["--model", models.b, "--index", path], capsys), path, models.a, models.b,
                       "--allow-other-model")
    serve = job("serve")
    payload = serve.load_payload(serve.parse_args(["--model", str(models.b), "--index", str(path),
                                                   "--allow-other-model"]))
    assert len(payload.index) == len(payload.shown) and "warning: " in capsys.readouterr().err


def test_an_index_saved_without_a_model_identity_is_refused_telling_how_to_rebuild(models, tmp_path, capsys):
    """As corrhash wrote them before the identity was recorded: the model's folder path, no shown array."""
    path, _ = saved(models, tmp_path, capsys)
    index = HammingIndex.load(path)
    old = HammingIndex(index.codes, index.ids, index.bits, {"model": str(models.a)})
    old.save(tmp_path / "old.npz")
    status, answers, stderr = search(capsys, models.a, "--index", tmp_path / "old.npz", "--queries", models.queries)
    assert_named_error(status, stderr, tmp_path / "old.npz", "older corrhash", "--index-out", "--allow-other-model")
    assert answers == []
    status, answers, stderr = search(capsys, models.a, "--index", tmp_path / "old.npz", "--queries", models.queries,
                                     "--k", 3, "--allow-other-model")
    assert status == 0 and "warning: " in stderr and len(answers) == 6, stderr
    assert all(set(h) == {"id", "distance"} for a in answers for h in a["hits"])  # it kept nothing to show


# ---- the same model: --index answers as --corpus did ------------------------------------------------------------


@pytest.mark.parametrize("source", ["shards", "jsonl"])
def test_index_answers_equal_corpus_answers_labels_and_text_included(models, source, tmp_path, capsys):
    corpus = models.shards if source == "shards" else models.corpus
    path, from_corpus = saved(models, tmp_path, capsys, corpus)
    status, from_index, stderr = search(capsys, models.a, "--index", path, "--queries", models.queries, "--k", 5)
    assert status == 0, stderr
    assert from_index == from_corpus
    shown = "labels" if source == "shards" else "text"
    assert all(shown in hit for answer in from_index for hit in answer["hits"])
    with np.load(path, allow_pickle=False) as arrays:  # still no pickle
        assert set(arrays.files) == {"codes", "ids", "shown", "sidecar"} and arrays["shown"].dtype == np.uint8


def test_a_copy_of_the_model_elsewhere_is_the_same_model(models, tmp_path, capsys):
    path, from_corpus = saved(models, tmp_path, capsys)
    shutil.copytree(models.a, tmp_path / "copy")
    status, from_index, stderr = search(capsys, tmp_path / "copy", "--index", path, "--queries", models.queries,
                                        "--k", 5)
    assert status == 0 and "warning" not in stderr, stderr
    assert from_index == from_corpus


def test_the_serve_payload_of_an_index_shows_what_the_corpus_payload_shows(models, tmp_path, capsys):
    path, _ = saved(models, tmp_path, capsys)
    serve = job("serve")
    from_index = serve.load_payload(serve.parse_args(["--model", str(models.a), "--index", str(path)]))
    from_corpus = serve.load_payload(serve.parse_args(["--model", str(models.a), "--corpus", str(models.shards)]))
    assert from_index.shown == from_corpus.shown and len(from_index.shown) == len(from_index.index)
    assert all(set(entry) == {"labels"} for entry in from_index.shown.values())


def test_a_resaved_index_keeps_its_model_and_what_it_shows(models, tmp_path, capsys):
    path, from_corpus = saved(models, tmp_path, capsys)
    again = tmp_path / "again.npz"
    status, _, stderr = search(capsys, models.a, "--index", path, "--index-out", again)
    assert status == 0, stderr
    assert json.loads(again.with_suffix(".json").read_text()) == json.loads(path.with_suffix(".json").read_text())
    assert HammingIndex.load(again).shown == HammingIndex.load(path).shown


def test_a_damaged_shown_array_is_a_named_error(models, tmp_path, capsys):
    path, _ = saved(models, tmp_path, capsys)
    with np.load(path, allow_pickle=False) as arrays:
        codes, ids = arrays["codes"], arrays["ids"]
    for name, shown in {"not-json": np.frombuffer(b"{oops", np.uint8),
                        "one-short": np.frombuffer(json.dumps([None] * (len(ids) - 1)).encode(), np.uint8),
                        "not-bytes": np.zeros(3, np.int64)}.items():
        bad = tmp_path / f"{name}.npz"
        np.savez(bad, codes=codes, ids=ids, shown=shown)
        shutil.copy(path.with_suffix(".json"), bad.with_suffix(".json"))
        with pytest.raises(DataError, match="shown") as caught:
            HammingIndex.load(bad)
        assert str(bad) in str(caught.value)


def test_an_index_refuses_a_model_of_its_weights_with_another_vocabulary(models, tmp_path, capsys):
    """Reliability review t4, R2: the identity was the weights only, so a model folder whose vocab.json was
    replaced or damaged searched an index silently with other codes."""
    path, _ = saved(models, tmp_path, capsys)
    swapped = tmp_path / "swapped"
    shutil.copytree(models.a, swapped)
    vocab = json.loads((swapped / "vocab.json").read_text())
    vocab["terms"][0], vocab["terms"][1] = vocab["terms"][1], vocab["terms"][0]
    (swapped / "vocab.json").write_text(json.dumps(vocab))
    status, answers, stderr = search(capsys, swapped, "--index", path, "--queries", models.queries)
    assert_named_error(status, stderr, path, "another vocabulary", "--allow-other-model")
    assert answers == []


def test_an_index_and_sidecar_from_two_saves_are_refused(models, tmp_path, capsys):
    """Reliability review t4, R4: a save killed between the .npz and its sidecar left model B's codes beside
    model A's sidecar, and model A searched them silently. The .npz keeps the sidecar it was saved with."""
    first, _ = saved(models, tmp_path / "a", capsys)
    second, _ = saved(models, tmp_path / "b", capsys, model=models.b)
    shutil.copy(second, first)  # B's codes, A's sidecar: what the kill left
    status, answers, stderr = search(capsys, models.a, "--index", first, "--queries", models.queries)
    assert_named_error(status, stderr, first, "two different saves")
    assert answers == []
