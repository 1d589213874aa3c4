"""prepare_data on the real 20 Newsgroups, Reuters-21578 and TMC archives."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from corrhash.data import SCHEMA, TfidfFeaturizer, TfidfShards
from corrhash.data.prepare import PrepareConfig, prepare


def check_split_invariants(shards: TfidfShards) -> dict[str, int]:
    counts = {}
    seen_ids = set()
    for name in ("train", "val", "test"):
        for path in shards.shard_paths(name):
            assert pq.read_schema(path).equals(SCHEMA), path
        split = shards.split(name)
        x = split.features
        counts[name] = x.shape[0]
        assert x.shape == (len(split.doc_ids), shards.n_features)
        assert x.dtype == np.float32 and x.nnz > 0
        for row in range(x.shape[0]):  # sorted, unique column indices per row
            cols = x.indices[x.indptr[row]:x.indptr[row + 1]]
            assert np.all(np.diff(cols) > 0), (name, row)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        assert (x.data > 0).all()
        assert split.labels.shape == (x.shape[0], len(shards.label_names))
        assert split.labels.sum(axis=1).min() >= 1  # no document without a label
        ids = set(split.doc_ids.tolist())
        assert len(ids) == len(split.doc_ids) and not (ids & seen_ids)
        seen_ids |= ids
        assert shards.manifest["splits"][name]["documents"] == counts[name]
    return counts


def test_20ng_default_recipe(shards_20ng):
    shards = TfidfShards(shards_20ng)
    counts = check_split_invariants(shards)
    # With the terms tied at the 10,000th count kept alphabetically (featurize.select_terms), on any CPU. Before,
    # numpy's CPU-dispatched sort chose them: 10481 / 3481 / 3481 where that recorded, 10481 / 3480 / 3481 here.
    assert counts == {"train": 10479, "val": 3480, "test": 3481}
    assert shards.n_features == 10_000
    assert len(shards.label_names) == 20 and shards.label_names[0] == "alt.atheism"
    train = shards.split("train")
    assert (train.labels.sum(axis=1) == 1).all()  # one newsgroup per post
    assert train.labels.sum(axis=0).min() > 300  # every group is represented
    m = shards.manifest
    assert m["recipe"]["recipe"]["max_features"] == 10_000 and len(m["sources"]) == 1
    assert all(len(v) == 64 for v in m["sources"].values())
    assert m["encoding"] == "latin-1"  # a few posts hold bytes that are not UTF-8
    assert all(len(entry["sha256"]) == 64 for split in m["splits"].values() for entry in split["shards"])
    assert m["dropped"]["too_short"]["train"] + m["dropped"]["too_long"]["train"] == 11314 - 10479


def test_20ng_vocab_featurizes_new_text_identically(shards_20ng):
    """vocab.json alone reproduces the stored rows: serving featurizes exactly like preparation."""
    shards = TfidfShards(shards_20ng)
    featurizer = TfidfFeaturizer.load(shards_20ng / "vocab.json")
    assert featurizer.n_features == shards.n_features
    text = "The hockey playoffs: the goalie stopped every shot, and the team won the cup."
    row = featurizer.transform([text])
    assert row.shape == (1, 10_000) and row.nnz >= 5
    vocab = {t: i for i, t in enumerate(featurizer.terms)}
    assert {"hockey", "goalie", "playoffs"} <= {featurizer.terms[j] for j in row.indices}
    assert "the" not in vocab  # stop words never enter the vocabulary
    np.testing.assert_allclose(np.linalg.norm(row.data), 1.0, rtol=1e-6)


def test_reuters_modapte_top20(shards_reuters):
    shards = TfidfShards(shards_reuters)
    counts = check_split_invariants(shards)
    assert counts == {"train": 7107, "val": 1366, "test": 1366}
    assert len(shards.label_names) == 20
    assert {"earn", "acq", "money-fx", "grain", "crude"} <= set(shards.label_names)
    train = shards.split("train")
    assert (train.labels.sum(axis=1) > 1).sum() > 500  # Reuters is multi-label
    assert shards.manifest["notes"]["modapte_documents"] == 9603 + 3299
    assert shards.manifest["encoding"] == "latin-1"  # reut2-017.sgm holds a 0xFC byte


def test_tmc_partial_counts_skipped(raw_dir, tmp_path):
    manifest = prepare(PrepareConfig(dataset="tmc", raw=raw_dir / "tmc", out=tmp_path / "tmc"))
    assert manifest["notes"]["skipped_without_text"] == 21519 - 944
    shards = TfidfShards(tmp_path / "tmc")
    counts = check_split_invariants(shards)
    assert counts == {"train": 943, "val": 3532, "test": 3533}
    assert len(shards.label_names) == 22


def test_deterministic_content_hash(raw_dir, shards_reuters, tmp_path):
    raw = raw_dir / "reuters21578" / "reuters21578.tar.xz"
    again = prepare(PrepareConfig(dataset="reuters", raw=raw, out=tmp_path / "again", rows_per_shard=500))
    first = json.loads((shards_reuters / "manifest.json").read_text())
    assert again["content_hash"] == first["content_hash"]  # shard size does not change the content
    reseeded = prepare(PrepareConfig(dataset="reuters", raw=raw, out=tmp_path / "seed1", seed=1))
    assert reseeded["content_hash"] != first["content_hash"]  # a different val/test halving
    assert reseeded["splits"]["val"]["documents"] == first["splits"]["val"]["documents"]
