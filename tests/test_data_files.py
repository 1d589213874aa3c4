"""prepare_data on small .mat and JSONL/CSV/Parquet files written here, and every error case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
import scipy.sparse as sp
import torch

from corrhash.data import TfidfFeaturizer, TfidfRecipe, TfidfShards
from corrhash.data.device_csr import place
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TOPICS = {
    "space": "orbit rocket launch moon shuttle nasa satellite planet astronaut mission".split(),
    "sport": "hockey goal team season player coach playoff score league game".split(),
    "crypto": "key encryption cipher secure privacy chip government algorithm code escrow".split(),
}
LOOSE = TfidfRecipe(min_df=1, max_df=1.0, min_tokens=6)


def synthetic_rows(n: int = 60, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    names = sorted(TOPICS)
    for i in range(n):
        first = names[i % 3]
        labels = [first] if i % 5 else [first, names[(i + 1) % 3]]
        words = [w for topic in labels for w in rng.choice(TOPICS[topic], size=12)]
        rows.append({"id": 1000 + i, "text": " ".join(words), "labels": labels})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_seeded_split(tmp_path):
    raw = write_jsonl(tmp_path / "docs.jsonl", synthetic_rows())
    manifest = prepare(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "out", recipe=LOOSE, rows_per_shard=7))
    counts = {s: v["documents"] for s, v in manifest["splits"].items()}
    assert counts == {"train": 48, "val": 6, "test": 6}  # 20% held out (12), halved
    assert manifest["label_names"] == ["crypto", "space", "sport"]
    assert len(manifest["splits"]["train"]["shards"]) == 7  # ceil(48 / 7)
    shards = TfidfShards(tmp_path / "out")
    ids = np.concatenate([shards.split(s).doc_ids for s in ("train", "val", "test")])
    assert sorted(ids.tolist()) == list(range(1000, 1060))  # the `id` column is kept
    # Labels round-trip: doc 1000 + i has the labels it was written with.
    rows = {r["id"]: r for r in synthetic_rows()}
    train = shards.split("train")
    for doc_id, label_row in zip(train.doc_ids, train.labels):
        assert [shards.label_names[j] for j in np.flatnonzero(label_row)] == sorted(rows[doc_id]["labels"])
    # vocab.json alone reproduces the stored TF-IDF rows.
    featurizer = TfidfFeaturizer.load(tmp_path / "out" / "vocab.json")
    again = featurizer.transform([rows[d]["text"] for d in train.doc_ids])
    np.testing.assert_allclose(again.toarray(), train.features.toarray(), rtol=1e-6)


def test_csv_and_parquet_with_split_column(tmp_path):
    rows = synthetic_rows()
    for i, row in enumerate(rows):
        row["split"] = "test" if i % 4 == 0 else "train"
    csv_path = tmp_path / "docs.csv"
    lines = ["id,text,labels,split"] + [f'{r["id"]},{r["text"]},"{",".join(r["labels"])}",{r["split"]}' for r in rows]
    csv_path.write_text("\n".join(lines) + "\n")
    parquet_path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path)
    hashes = []
    for raw in (csv_path, parquet_path):
        manifest = prepare(PrepareConfig(dataset="text", raw=raw, out=tmp_path / raw.suffix[1:], recipe=LOOSE))
        assert {s: v["documents"] for s, v in manifest["splits"].items()} == {"train": 45, "val": 7, "test": 8}
        hashes.append(manifest["content_hash"])
    assert hashes[0] == hashes[1]  # same rows, same content, whatever the file format


def write_mat(path: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    parts = {}
    for key, n in (("train", 30), ("cv", 8), ("test", 9)):
        x = (sp.random(n, 40, density=0.2, random_state=rng, format="csr") * 5).tolil()
        x[0, :] = 0  # an empty row: dropped
        y = np.zeros((n, 4))
        y[np.arange(n), rng.integers(0, 4, n)] = 1
        y[1, :] = 0  # a row without labels: dropped
        parts[key], parts[f"gnd_{key}"] = x.tocsr(), y
    scipy.io.savemat(str(path), parts)
    return parts


def test_mat_round_trip_exact(tmp_path):
    parts = write_mat(tmp_path / "small.mat")
    manifest = prepare(PrepareConfig(dataset="mat", raw=tmp_path / "small.mat", out=tmp_path / "out"))
    assert manifest["n_features"] == 40 and manifest["label_names"] == ["0", "1", "2", "3"]
    shards = TfidfShards(tmp_path / "out")
    offsets = {"train": 0, "cv": 30, "test": 38}
    for split, key in (("train", "train"), ("val", "cv"), ("test", "test")):
        loaded = shards.split(split)
        x = parts[key].toarray()
        expected = x[2:] / np.linalg.norm(x[2:], axis=1, keepdims=True)
        np.testing.assert_array_equal(loaded.features.toarray(), expected.astype(np.float32))
        np.testing.assert_array_equal(loaded.labels, parts[f"gnd_{key}"][2:].astype(bool))
        np.testing.assert_array_equal(loaded.doc_ids, offsets[key] + np.arange(2, x.shape[0]))
        on_torch = place(loaded.features, torch.device("cpu")).range(0, len(loaded))
        np.testing.assert_array_equal(on_torch.to_dense().numpy(), loaded.features.toarray())
        assert on_torch.layout == torch.sparse_csr
    assert manifest["dropped"] == {"no_labels": {"train": 1, "val": 1, "test": 1},
                                   "empty": {"train": 1, "val": 1, "test": 1}}
    with pytest.raises(DataError, match="holds no text featurizer"):
        TfidfFeaturizer.load(tmp_path / "out" / "vocab.json")


def test_reader_loads_a_subset_of_shards(tmp_path):
    raw = write_jsonl(tmp_path / "docs.jsonl", synthetic_rows())
    prepare(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "out", recipe=LOOSE, rows_per_shard=10))
    shards = TfidfShards(tmp_path / "out")
    paths = shards.shard_paths("train")
    whole = shards.split("train")
    parts = [shards.split("train", shards=paths[i::2]) for i in range(2)]  # two workers' shares
    assert sum(len(p) for p in parts) == len(whole)
    assert sorted(np.concatenate([p.doc_ids for p in parts]).tolist()) == sorted(whole.doc_ids.tolist())


# ---------------------------------------------------------------- errors


def run(config: PrepareConfig) -> str:
    with pytest.raises(DataError) as info:
        prepare(config)
    return str(info.value)


def test_error_missing_file(tmp_path):
    message = run(PrepareConfig(dataset="20ng", raw=tmp_path / "nope.tar.gz", out=tmp_path / "o"))
    assert "nope.tar.gz" in message and "no such file" in message


def test_error_unreadable_archive(tmp_path):
    bad = tmp_path / "20news-bydate.tar.gz"
    bad.write_bytes(b"this is not a tar archive" * 100)
    message = run(PrepareConfig(dataset="20ng", raw=bad, out=tmp_path / "o"))
    assert str(bad) in message and "tar archive" in message


def test_error_wrong_columns(tmp_path):
    raw = write_jsonl(tmp_path / "docs.jsonl", [{"body": "a b c", "tags": ["x"]}])
    message = run(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "o"))
    assert "docs.jsonl" in message and "'text'" in message and "body" in message


def test_error_label_column_wrong_type(tmp_path):
    rows = synthetic_rows()
    rows[6]["labels"] = 3.5
    message = run(PrepareConfig(dataset="text", raw=write_jsonl(tmp_path / "docs.jsonl", rows), out=tmp_path / "o"))
    assert "docs.jsonl, row 7" in message and "labels" in message and "float" in message


def test_error_empty_after_filtering(tmp_path):
    raw = write_jsonl(tmp_path / "docs.jsonl", synthetic_rows())
    recipe = TfidfRecipe(min_df=1, max_df=1.0, min_tokens=400, max_tokens=500)
    message = run(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "o", recipe=recipe))
    assert "empty after filtering" in message


def test_error_split_without_documents(tmp_path):
    rows = [dict(row, split="train") for row in synthetic_rows()]
    message = run(PrepareConfig(dataset="text", raw=write_jsonl(tmp_path / "d.jsonl", rows), out=tmp_path / "o",
                                recipe=LOOSE))
    assert "split 'val' has no documents" in message
    rows[0]["split"] = "holdout"
    message = run(PrepareConfig(dataset="text", raw=write_jsonl(tmp_path / "d.jsonl", rows), out=tmp_path / "o"))
    assert "row 1" in message and "holdout" in message


def test_error_mat_missing_variables(tmp_path):
    scipy.io.savemat(str(tmp_path / "x.mat"), {"train": np.eye(3)})
    message = run(PrepareConfig(dataset="mat", raw=tmp_path / "x.mat", out=tmp_path / "o"))
    assert "x.mat" in message and "gnd_train" in message


def test_bad_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--rows-per-shard"):
        prepare(PrepareConfig(dataset="text", raw=tmp_path, out=tmp_path / "o", rows_per_shard=0))


def test_existing_output_kept_without_overwrite_and_nothing_half_written(tmp_path):
    raw = write_jsonl(tmp_path / "docs.jsonl", synthetic_rows())
    out = tmp_path / "out"
    first = prepare(PrepareConfig(dataset="text", raw=raw, out=out, recipe=LOOSE))
    message = run(PrepareConfig(dataset="text", raw=raw, out=out, recipe=LOOSE))
    assert "already exists" in message and "--overwrite" in message
    # A failing overwrite (bad input) leaves the old output intact and no temporary folder behind.
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "labels": None}])
    run(PrepareConfig(dataset="text", raw=bad, out=out, recipe=LOOSE, overwrite=True))
    assert json.loads((out / "manifest.json").read_text())["content_hash"] == first["content_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "docs.jsonl", "out"]
    again = prepare(PrepareConfig(dataset="text", raw=raw, out=out, recipe=LOOSE, seed=3, overwrite=True))
    assert again["content_hash"] != first["content_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "docs.jsonl", "out"]


def test_offline_20ng_download_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("CORRHASH_RAW_DIR", raising=False)
    monkeypatch.setenv("CORRHASH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CORRHASH_20NG_URL", "http://127.0.0.1:9/20news-bydate.tar.gz")  # nothing listens
    message = run(PrepareConfig(dataset="20ng", out=tmp_path / "o"))
    assert "could not download" in message and "--raw" in message and "CORRHASH_RAW_DIR" in message
    assert not list((tmp_path / "cache").glob("*"))  # no partial download left


def test_cli_help_and_error_exit(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "platform"))
    help_text = subprocess.run([sys.executable, "jobs/prepare_data.py", "--help"], cwd=REPO, env=env,
                               capture_output=True, text=True, check=True).stdout
    assert "--top-labels" in help_text and "CORRHASH_RAW_DIR" in help_text
    done = subprocess.run([sys.executable, "jobs/prepare_data.py", "reuters", "--raw", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "error:" in done.stderr and "missing" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- text encoding and Unicode

UNICODE_TEXTS = {
    "latin": "naïve café münchen über straße façade",
    "greek": "καλημέρα κόσμε φιλοσοφία αθήνα",
    "cyrillic": "привет мир москва литература",
    "cjk": "東京 大学 日本語 中文 汉字",
}


def unicode_rows() -> list[dict]:
    rows = []
    for i in range(60):
        script = sorted(UNICODE_TEXTS)[i % 4]
        rows.append({"id": i, "text": f"{UNICODE_TEXTS[script]} {script} document {i % 7}", "labels": [script]})
    return rows


def test_utf8_text_featurizes_identically_at_serving_time(tmp_path):
    raw = tmp_path / "docs.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unicode_rows()), encoding="utf-8")
    manifest = prepare(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "out", recipe=LOOSE))
    assert manifest["encoding"] == "utf-8" and manifest["recipe"]["encoding"] == "utf-8"
    featurizer = TfidfFeaturizer.load(tmp_path / "out" / "vocab.json")
    assert {"naïve", "café", "münchen", "über", "straße", "καλημέρα", "привет", "東京", "日本語"} <= set(featurizer.terms)
    # The serving path (vocab.json + real Unicode strings) reproduces the stored rows exactly.
    shards = TfidfShards(tmp_path / "out")
    rows = {r["id"]: r for r in unicode_rows()}
    train = shards.split("train")
    again = featurizer.transform([rows[d]["text"] for d in train.doc_ids])
    np.testing.assert_array_equal(again.toarray(), train.features.toarray())
    query = featurizer.transform(["naïve café münchen über straße"])
    assert query.nnz == 5
    # Decomposed "é" (e + U+0301), upper case, and composed text are one term.
    decomposed = "nai\u0308ve cafe\u0301 mu\u0308nchen u\u0308ber straße"
    for variant in (decomposed, "NAÏVE CAFÉ MÜNCHEN ÜBER straße"):
        np.testing.assert_array_equal(featurizer.transform([variant]).toarray(), query.toarray())


def test_other_encodings_need_the_option(tmp_path):
    rows = [{"id": i, "text": f"{UNICODE_TEXTS['latin']} document {i % 7}", "labels": ["a" if i % 2 else "b"]}
            for i in range(40)]
    raw = tmp_path / "docs.csv"
    lines = ["id,text,labels"] + [f'{r["id"]},{r["text"]},{r["labels"][0]}' for r in rows]
    raw.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    message = run(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "o", recipe=LOOSE))
    assert "docs.csv, line 2" in message and "utf-8" in message and "--encoding" in message
    manifest = prepare(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "o", recipe=LOOSE, encoding="cp1252"))
    assert manifest["encoding"] == "cp1252"
    assert "café" in TfidfFeaturizer.load(tmp_path / "o" / "vocab.json").terms


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    rows = synthetic_rows()
    raw = tmp_path / "docs.csv"
    lines = ["text,labels"] + [f'{r["text"]},{r["labels"][0]}' for r in rows]
    raw.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    manifest = prepare(PrepareConfig(dataset="text", raw=raw, out=tmp_path / "o", recipe=LOOSE))
    assert manifest["splits"]["train"]["documents"] == 48


def test_synthetic_shards_fixture(shards_synthetic):
    """The synthetic corpus (tests/conftest.py) prepares into the documented splits, shards and labels."""
    from conftest import SYNTHETIC_SPLITS, SYNTHETIC_TOPICS

    shards = TfidfShards(shards_synthetic)
    assert len(shards.label_names) == SYNTHETIC_TOPICS
    for split, count in SYNTHETIC_SPLITS.items():
        data = shards.split(split)
        assert data.features.shape == (count, shards.n_features) and data.labels.any(axis=1).all()
    assert len(shards.manifest["splits"]["train"]["shards"]) == 4
    assert 250 < shards.n_features <= SYNTHETIC_TOPICS * 30 + 60


# ---------------------------------------------------------------- corrhash.atomic (every atomic write uses it)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    from corrhash.atomic import atomic_dir

    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in target.iterdir()] == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in target.iterdir()] == ["c"]


def test_atomic_open_keeps_the_old_file_on_error_and_plain_permissions(tmp_path):
    from corrhash.atomic import atomic_open, atomic_write_text

    path = tmp_path / "f.json"
    atomic_write_text(path, "old")
    with pytest.raises(ValueError):
        with atomic_open(path) as handle:
            handle.write(b"new, but")
            raise ValueError("checksum mismatch")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600
