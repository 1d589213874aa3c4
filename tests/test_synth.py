"""The synthetic text corpus generator (bench/synthetic.py, python -m bench.synth): seeded and byte-reproducible,
Zipfian word frequencies, topic labels that skew the words, log-normal lengths, splits, several files that
`prepare_data.py text` reads as one corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from bench.synthetic import PARAMS_FILE, SynthConfig, TextGenerator, pseudo_words, write_corpus
from corrhash.data import TfidfRecipe
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
N = 3000


def rows_of(files: list[Path]) -> list[dict]:
    rows = []
    for path in files:
        if path.suffix == ".parquet":
            rows += pq.read_table(path).to_pylist()
        else:
            rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[dict]:
    return rows_of(write_corpus(SynthConfig(out=tmp_path_factory.mktemp("synth") / "c", n_docs=N, seed=7)))


def test_same_seed_same_bytes_whatever_the_number_of_files(tmp_path):
    one = write_corpus(SynthConfig(out=tmp_path / "one", n_docs=N, seed=3))
    again = write_corpus(SynthConfig(out=tmp_path / "again", n_docs=N, seed=3))
    three = write_corpus(SynthConfig(out=tmp_path / "three", n_docs=N, seed=3, files=3))
    other = write_corpus(SynthConfig(out=tmp_path / "other", n_docs=N, seed=4))
    assert one[0].read_bytes() == again[0].read_bytes()
    assert b"".join(p.read_bytes() for p in three) == one[0].read_bytes()
    assert [p.name for p in three] == [f"part-0000{k}-of-00003.jsonl" for k in range(3)]
    assert all(p.stat().st_size > 0 for p in three)
    assert other[0].read_bytes() != one[0].read_bytes()
    params = json.loads((tmp_path / "three" / PARAMS_FILE).read_text())
    assert params["params"]["files"] == 3 and params["files"] == [p.name for p in three]
    parquet = write_corpus(SynthConfig(out=tmp_path / "pq", n_docs=N, seed=3, files=2, format="parquet"))
    assert rows_of(parquet) == rows_of(one)


def test_documents_in_order_with_ids_labels_and_splits(corpus):
    assert [row["id"] for row in corpus] == list(range(N))
    assert all(set(row) == {"id", "text", "labels", "split"} for row in corpus)
    n_labels = Counter(len(row["labels"]) for row in corpus)
    assert set(n_labels) == {1, 2, 3} and n_labels[1] > n_labels[2] > n_labels[3]
    assert all(len(set(row["labels"])) == len(row["labels"]) and row["labels"] == sorted(row["labels"])
               for row in corpus)
    assert {label for row in corpus for label in row["labels"]} == {f"topic{t:02d}" for t in range(20)}
    splits = Counter(row["split"] for row in corpus)
    assert abs(splits["train"] / N - 0.8) < 0.03 and abs(splits["val"] / N - 0.1) < 0.02
    assert abs(splits["test"] / N - 0.1) < 0.02


def test_lengths_are_log_normal_around_the_median(corpus):
    lengths = np.array([len(row["text"].split()) for row in corpus])
    assert abs(np.median(lengths) / 150 - 1) < 0.06
    # log-normal with sigma 0.6: the 90th percentile is exp(1.2816 * 0.6) = 2.16 times the median
    assert 1.9 < np.percentile(lengths, 90) / np.median(lengths) < 2.4
    assert lengths.min() >= 8 and lengths.max() <= 2000


def test_word_frequencies_follow_a_zipf_law(corpus):
    counts = Counter(word for row in corpus for word in row["text"].split())
    frequencies = np.array(sorted(counts.values(), reverse=True), dtype=float)
    ranks = np.arange(1, len(frequencies) + 1)
    # the head of the distribution (the background words) has slope about -s on a log-log plot
    slope = np.polyfit(np.log(ranks[2:300]), np.log(frequencies[2:300]), 1)[0]
    assert -1.3 < slope < -0.8
    assert frequencies[0] / frequencies[9] > 5


def test_topics_skew_the_words(corpus):
    """A topic's most frequent words are far more frequent in documents with that label than in the others."""
    generator = TextGenerator(SynthConfig(out=Path("unused"), n_docs=N, seed=7))
    block = set(generator.words[generator.topic_start[0]:generator.topic_start[0] + 20].tolist())
    with_label = [row for row in corpus if "topic00" in row["labels"]]
    without = [row for row in corpus if "topic00" not in row["labels"]]

    def rate(rows):
        words = [w for row in rows for w in row["text"].split()]
        return sum(w in block for w in words) / len(words)
    assert rate(with_label) > 20 * rate(without)


def test_pseudo_words_are_not_english_stop_words():
    words = pseudo_words(20_000)
    assert len(set(words)) == 20_000
    assert not set(words) & ENGLISH_STOP_WORDS
    assert all(len(w) >= 4 and w.isalpha() for w in words)
    assert len(words[0]) <= len(words[-1])  # frequent (low rank) words are the short ones


def test_several_files_prepare_as_one_corpus(tmp_path):
    """A folder of K files, the files named one by one and a glob prepare to the same content as one file."""
    recipe = TfidfRecipe(min_df=2, max_df=1.0)
    one = write_corpus(SynthConfig(out=tmp_path / "one", n_docs=600, seed=1))
    three = write_corpus(SynthConfig(out=tmp_path / "three", n_docs=600, seed=1, files=3, format="parquet"))
    hashes = [prepare(PrepareConfig(dataset="text", raw=raw, out=tmp_path / f"out{i}", recipe=recipe))
              for i, raw in enumerate([one[0], tmp_path / "three", three, [tmp_path / "three" / "*.parquet"]])]
    assert len({m["content_hash"] for m in hashes}) == 1
    assert list(hashes[1]["sources"]) == [str(p) for p in three]
    assert sum(hashes[0]["splits"][s]["documents"] for s in ("train", "val", "test")) > 500


def test_bad_options_and_existing_output(tmp_path):
    with pytest.raises(ConfigError, match="--files"):
        write_corpus(SynthConfig(out=tmp_path / "x", n_docs=5, files=6))
    with pytest.raises(ConfigError, match="--val-fraction"):
        write_corpus(SynthConfig(out=tmp_path / "x", n_docs=5, val_fraction=0.5, test_fraction=0.5))
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        write_corpus(SynthConfig(out=tmp_path / "mine", n_docs=5))
    with pytest.raises(ConfigError, match="not written by the generator"):
        write_corpus(SynthConfig(out=tmp_path / "mine", n_docs=5, overwrite=True))
    write_corpus(SynthConfig(out=tmp_path / "ok", n_docs=5))
    write_corpus(SynthConfig(out=tmp_path / "ok", n_docs=7, overwrite=True))
    assert len(rows_of(sorted((tmp_path / "ok").glob("*.jsonl")))) == 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_job_writes_the_files_and_exits_2_on_a_bad_option(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.synth", "--out", str(tmp_path / "c"), "--n-docs", "50",
                           "--files", "2", "--format", "parquet"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "50 documents in 2 file(s)" in done.stdout
    assert len(rows_of(sorted((tmp_path / "c").glob("*.parquet")))) == 50
    bad = subprocess.run([sys.executable, "-m", "bench.synth", "--out", str(tmp_path / "d"), "--n-docs", "0"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--n-docs 0" in bad.stderr
