"""Preparation as Ray tasks (`prepare_data.py text --ray`, data/prepare_ray.py) gives what one process gives: the same
manifest (content hash included), vocab.json and shard files, byte for byte; and fails with the same messages.

The pieces both paths share are checked here without Ray; the comparison runs an embedded local Ray in a subprocess
(marked slow), over corpora split into several files so that shards straddle file boundaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer

from bench.synthetic import SynthConfig, write_corpus
from corrhash.data import TfidfRecipe
from corrhash.data.prepare import PrepareConfig, prepare, shard_pieces
from corrhash.data.featurize import TOKEN_PATTERN, TermCounts, TfidfFeaturizer, analyzer, normalize_text
from corrhash.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def texts(n: int, seed: int) -> list[str]:
    """Short documents over a small vocabulary: many terms tie on their counts."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(60)] + ["the", "and", "Café", "cafe\u0301"]
    return [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(n)]


@pytest.mark.parametrize("recipe", [TfidfRecipe(), TfidfRecipe(min_df=1, max_df=1.0, max_features=17),
                                    TfidfRecipe(min_df=2, max_df=0.3, max_features=9, stop_words=None),
                                    TfidfRecipe(min_df=1, max_df=0.9, max_features=None)])
def test_vocabulary_from_merged_block_counts_is_countvectorizers(recipe):
    docs = texts(300, 0)
    vectorizer = CountVectorizer(token_pattern=TOKEN_PATTERN, preprocessor=normalize_text,
                                 stop_words=recipe.stop_words, max_features=recipe.max_features,
                                 max_df=recipe.max_df, min_df=recipe.min_df, dtype=np.int32).fit(docs)
    analyze = analyzer(recipe)
    merged = TermCounts()
    for start in range(0, len(docs), 70):  # blocks, merged as the Ray path merges them
        merged += TermCounts.from_columns(TermCounts().add(docs[start:start + 70], analyze).to_columns())
    whole = TermCounts().add(docs, analyze)
    assert merged == whole
    assert TfidfFeaturizer.from_counts(merged, recipe).terms == list(vectorizer.get_feature_names_out())


def test_idf_from_block_document_frequencies():
    featurizer = TfidfFeaturizer.fit_vocabulary(texts(200, 1), TfidfRecipe(min_df=1, max_df=1.0))
    counts = featurizer.counts(texts(200, 2))
    featurizer.fit_idf(counts)
    whole = featurizer.idf
    df = featurizer.document_frequencies(counts[:77]) + featurizer.document_frequencies(counts[77:])
    featurizer.fit_idf_from(df, counts.shape[0])
    assert np.array_equal(featurizer.idf, whole)
    assert np.array_equal(featurizer.tfidf(counts[50:90]).toarray(), featurizer.tfidf(counts)[50:90].toarray())


def test_vocabulary_errors_keep_their_messages():
    with pytest.raises(DataError, match="empty vocabulary"):
        TfidfFeaturizer.fit_vocabulary(["the and", "of"], TfidfRecipe())
    with pytest.raises(DataError, match="no terms remain"):
        TfidfFeaturizer.fit_vocabulary(["aa bb", "cc dd", "ee"], TfidfRecipe(min_df=2, max_df=1.0))
    with pytest.raises(DataError, match="max_df corresponds to < documents than min_df"):
        TfidfFeaturizer.fit_vocabulary(["aa bb", "cc dd"], TfidfRecipe(min_df=2))


def test_shard_pieces_follow_the_split_order_across_files():
    pieces = shard_pieces([3, 0, 4], "train", None, 5)
    assert pieces == [[{"file": 0, "split": "train", "start": 0, "stop": 3},
                       {"file": 2, "split": "train", "start": 0, "stop": 2}],
                      [{"file": 2, "split": "train", "start": 2, "stop": 4}]]
    chosen = shard_pieces([3, 4], "test", np.array([1, 2, 5, 6]), 3)
    assert chosen == [[{"file": 0, "split": "test", "rows": [1, 2]}, {"file": 1, "split": "test", "rows": [2]}],
                      [{"file": 1, "split": "test", "rows": [3]}]]


def test_uri_inputs_read_as_local_files(tmp_path):
    """file:// URIs (read through pyarrow.fs, as s3:// or gs:// would be): an object, a .gz object, a prefix of
    Parquet files; the same content as the local files, the manifest naming the URIs."""
    import gzip

    jsonl_files = write_corpus(SynthConfig(out=tmp_path / "j", n_docs=400, seed=2, files=2))
    gz = tmp_path / "j" / "second.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl_files[1].read_bytes()))
    write_corpus(SynthConfig(out=tmp_path / "p", n_docs=400, seed=2, files=3, format="parquet"))
    recipe = TfidfRecipe(min_df=2, max_df=1.0)
    local = prepare(PrepareConfig(dataset="text", raw=jsonl_files, out=tmp_path / "local", recipe=recipe))
    by_uri = prepare(PrepareConfig(dataset="text", raw=[f"file://{jsonl_files[0]}", f"file://{gz}"],
                                   out=tmp_path / "uri", recipe=recipe))
    prefix = prepare(PrepareConfig(dataset="text", raw=[f"file://{tmp_path / 'p'}"], out=tmp_path / "prefix",
                                   recipe=recipe))
    assert local["content_hash"] == by_uri["content_hash"] == prefix["content_hash"]
    assert list(by_uri["sources"]) == [f"file://{jsonl_files[0]}", f"file://{gz}"]
    assert list(prefix["sources"]) == [f"file://{p}" for p in sorted((tmp_path / "p").glob("*.parquet"))]
    with pytest.raises(DataError, match="no such object or prefix"):
        prepare(PrepareConfig(dataset="text", raw=[f"file://{tmp_path / 'nothing'}"], out=tmp_path / "x"))
    with pytest.raises(DataError, match="credentials in the URI"):
        prepare(PrepareConfig(dataset="text", raw=["s3://bucket/corpus?secret_key=abc"], out=tmp_path / "x"))


# ---------------------------------------------------------------- Ray tasks against one process

RUN_ON_RAY = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, "platform")
sys.path.insert(0, "jobs")
from corrhash.data import TfidfRecipe
from corrhash.data.prepare import PrepareConfig
from corrhash.errors import CorrhashError
from corrhash.data.prepare_ray import prepare_on_ray
import prepare_data

cases = json.loads(Path(sys.argv[1]).read_text())
results = {}
for name, case in cases.items():
    if case.get("cli"):
        code = prepare_data.main(case["cli"])
        results[name] = {"exit": code}
        continue
    config = PrepareConfig(dataset="text", raw=case["raw"], out=Path(case["out"]),
                           recipe=TfidfRecipe(**case["recipe"]), rows_per_shard=case["rows_per_shard"],
                           limit=case.get("limit"))
    try:
        results[name] = {"manifest": prepare_on_ray(config)}
    except CorrhashError as exc:
        results[name] = {"error": str(exc)}
Path(sys.argv[2]).write_text(json.dumps(results))
"""


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def on_ray(tmp_path_factory):
    """Several preparations in one embedded Ray (a subprocess: Ray stays out of the test process)."""
    base = tmp_path_factory.mktemp("ray-prep")
    synth = write_corpus(SynthConfig(out=base / "synth", n_docs=1500, seed=5, files=4, vocab_size=4000,
                                     topics=5, topic_words=200, median_tokens=40))
    pq_files = write_corpus(SynthConfig(out=base / "synth-pq", n_docs=700, seed=6, files=3, format="parquet",
                                        vocab_size=3000, topics=4, topic_words=100, median_tokens=30))
    rows = [json.loads(line) for path in synth for line in path.read_text().splitlines()][:900]
    for i, row in enumerate(rows):  # no split column (held-out test rows, halved into val and test), no id
        del row["split"], row["id"]
        if i % 50 == 7:
            row["labels"] = []  # dropped for want of labels
    no_split = [jsonl(base / f"nosplit-{k}.jsonl", rows[k * 300:(k + 1) * 300]) for k in range(3)]
    dup = [jsonl(base / "dup-0.jsonl", [{"id": 1, "text": "aa bb", "labels": ["x"]}]),
           jsonl(base / "dup-1.jsonl", [{"id": 1, "text": "cc dd", "labels": ["y"]}])]
    bad = [synth[0], jsonl(base / "bad.jsonl", [{"text": "aa", "labels": ["x"], "split": "train"},
                                                {"text": 5, "labels": ["x"], "split": "train"}])]
    capped = dict(min_df=1, max_df=0.9, max_features=300)
    cases = {
        "synth": dict(raw=[str(p) for p in synth], recipe=dict(min_df=2, max_df=1.0), rows_per_shard=170),
        "capped": dict(raw=[str(base / "synth")], recipe=capped, rows_per_shard=500),
        "parquet": dict(raw=[str(p) for p in pq_files], recipe=dict(min_df=2, max_df=1.0, min_tokens=3),
                        rows_per_shard=64),
        "no_split": dict(raw=[str(p) for p in no_split], recipe=dict(min_df=2, max_df=1.0), rows_per_shard=40),
        "uri": dict(raw=[f"file://{base / 'synth-pq'}"], recipe=dict(min_df=2, max_df=1.0), rows_per_shard=100),
        "limit": dict(raw=[str(p) for p in no_split], recipe=dict(min_df=2, max_df=1.0), rows_per_shard=30, limit=70),
        "dup": dict(raw=[str(p) for p in dup], recipe=dict(min_df=1, max_df=1.0), rows_per_shard=10),
        "bad": dict(raw=[str(p) for p in bad], recipe=dict(min_df=1, max_df=1.0), rows_per_shard=10),
        "cli": dict(cli=["text", "--raw", *map(str, synth), "--out", str(base / "out-cli"), "--min-df", "2",
                         "--max-df", "1.0", "--rows-per-shard", "170", "--ray", "--name", "out-synth"]),
    }
    for name, case in cases.items():
        case.setdefault("out", str(base / f"out-{name}"))
    (base / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, "-c", RUN_ON_RAY, str(base / "cases.json"), str(base / "results.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return base, cases, json.loads((base / "results.json").read_text()), done.stderr


def in_one_process(case: dict, out: Path) -> dict:
    return prepare(PrepareConfig(dataset="text", raw=case["raw"], out=out,
                                 recipe=TfidfRecipe(**case["recipe"]), rows_per_shard=case["rows_per_shard"],
                                 limit=case.get("limit")))


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", ["synth", "capped", "parquet", "no_split", "uri", "limit"])
def test_preparation_on_ray_equals_one_process(on_ray, name):
    base, cases, results, _ = on_ray
    ray_manifest = results[name]["manifest"]
    # The same folder name elsewhere: a text corpus is named for its folder, and the manifests must be equal.
    local = in_one_process(cases[name], base / "local" / f"out-{name}")
    assert ray_manifest["content_hash"] == local["content_hash"]
    assert ray_manifest == local  # splits, shard boundaries and checksums, dropped counts, sources, notes
    same_files(Path(cases[name]["out"]), base / "local" / f"out-{name}")  # vocab.json, manifest.json, every shard
    if name == "synth":
        assert len(local["splits"]["train"]["shards"]) > len(cases[name]["raw"])  # shards straddle files
    if name == "no_split":
        assert local["notes"]["split_column"] is False and local["dropped"]["no_labels"]
    if name == "limit":
        assert [local["splits"][s]["documents"] for s in ("train", "val", "test")] == [70, 70, 70]
    assert not [p for p in base.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.slow
@pytest.mark.ray
def test_job_option_ray_writes_the_same_folder(on_ray):
    base, cases, results, stderr = on_ray
    assert results["cli"] == {"exit": 0}
    same_files(base / "out-cli", Path(cases["synth"]["out"]))
    assert "ray: transform and write shards" in stderr


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", ["dup", "bad"])
def test_preparation_on_ray_fails_as_one_process(on_ray, name):
    base, cases, results, _ = on_ray
    with pytest.raises(DataError) as local:
        in_one_process(cases[name], base / "local" / f"out-{name}")
    assert results[name] == {"error": str(local.value)}
    assert not Path(cases[name]["out"]).exists()


def test_job_options_ray_and_address(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "jobs/prepare_data.py", *args, "--out", str(tmp_path / "o")],
                              cwd=REPO, capture_output=True, text=True)
    address_alone = run("text", "--raw", str(tmp_path), "--address", "127.0.0.1:6379")
    assert address_alone.returncode == 2 and "--address applies with --ray only" in address_alone.stderr
    not_text = run("reuters", "--raw", str(tmp_path), "--ray")
    assert not_text.returncode == 2 and "--ray prepares text tables" in not_text.stderr
    assert not (tmp_path / "o").exists()
