"""The project's synthetic corpora, in one place: what the benchmarks, `python -m bench.synth` and the tests
generate, seeded, and no one can mistake for real text. Three shapes, for three needs:

- `write_corpus(SynthConfig)`: text at any size, streamed to JSONL or Parquet files that `prepare_data.py text`
  reads (`python -m bench.synth`; the scale benchmark prepares these). Below.
- `write_topic_corpus(path)`: the tests' small JSONL corpus (the `shards_synthetic` fixture in tests/conftest.py):
  480 documents over 8 topics of 30 words each, in a second. Its bytes are pinned (tests/test_recipes.py
  records numbers trained on it, under its content hash), so its algorithm stays as it is.
- `tmc_shaped_corpus()`: TF-IDF `Split`s in memory with the shape of TMC, for the epoch benchmark
  (`python -m bench.run --sections epochs`) and bench/graph.py; no text, no preparation step.

All three label a document with 1-3 topics (2 at most in the topic corpus) and draw part of its words from
its topics' own words, the rest from words every topic shares, so documents that share a label share words
and retrieval precision means something.

The text at any size: words are pronounceable pseudo-words ("bafo", "kelimu", ...: consonant-vowel syllables,
never an English stop word), ranked by a Zipf law (word r has weight 1 / (r + 1) ** s), short words most
frequent as in real text. Each of `topics` topics owns a block of the vocabulary below its most frequent
words; a document has 1-3 topics (its labels) and draws `topic_share` of its tokens from its topics' blocks
(Zipf within a block), the rest from the whole vocabulary. Lengths are log-normal (median `median_tokens`),
splits drawn per document with the given fractions.

Generation streams: documents are made in fixed batches, each from its own generator seeded with
(seed, batch number), and written as they come, so memory does not grow with the corpus, and the same
seed gives the same documents byte for byte whatever the number of files or their format. Document i
goes to file i * files // n_docs: reading the files in name order gives the documents in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from corrhash.atomic import atomic_dir
from bench.options import CLI
from corrhash.data.shards import Split
from corrhash.errors import ConfigError
from corrhash.log import log

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
BATCH = 4096
"""Documents per generation batch: part of the corpus's definition (each batch has its own seeded generator)."""
LABELS_PER_DOC = (1, 2, 3)
LABELS_PER_DOC_P = (0.6, 0.3, 0.1)
FORMATS = ("jsonl", "parquet")
PARAMS_FILE = "synth-params.txt"
"""The generator's options and the file list, as JSON (not named .json: a folder of tables is read whole)."""


@dataclass
class SynthConfig:
    out: Path
    """Output folder (must not exist unless --overwrite); written in a temporary sibling and renamed into place."""
    n_docs: int = 10_000
    """Documents to generate."""
    seed: int = 0
    """Seed: the same seed and options give the same files, byte for byte."""
    files: int = 1
    """Number of files the documents are split into (contiguous ranges, in order)."""
    format: str = field(default="jsonl", metadata={CLI: {"choices": FORMATS}})
    """File format: jsonl or parquet."""
    vocab_size: int = 50_000
    """Distinct pseudo-words."""
    zipf_s: float = 1.05
    """Zipf exponent of the word frequencies."""
    topics: int = 20
    """Topics (labels); each document has 1-3."""
    topic_share: float = 0.3
    """Fraction of a document's tokens drawn from its topics' word blocks."""
    topic_words: int = 1000
    """Words per topic block."""
    median_tokens: int = 150
    """Median document length in tokens (log-normal)."""
    length_sigma: float = 0.6
    """Log-normal sigma of the document lengths."""
    min_tokens: int = 8
    """Shortest document."""
    max_tokens: int = 2000
    """Longest document."""
    val_fraction: float = 0.1
    """Fraction of documents in the val split."""
    test_fraction: float = 0.1
    """Fraction of documents in the test split (the rest is train)."""
    overwrite: bool = False
    """Replace an existing output folder written by this generator."""

    def validate(self) -> None:
        checks = [
            (self.n_docs >= 1, f"--n-docs {self.n_docs}: must be >= 1"),
            (1 <= self.files <= self.n_docs, f"--files {self.files}: must be between 1 and --n-docs"),
            (self.format in FORMATS, f"--format {self.format!r}: choose one of {', '.join(FORMATS)}"),
            (self.seed >= 0, f"--seed {self.seed}: must be >= 0"),
            (self.zipf_s > 0, f"--zipf-s {self.zipf_s}: must be > 0"),
            (self.topics >= 3, f"--topics {self.topics}: must be >= 3 (a document has up to 3)"),
            (0 <= self.topic_share <= 1, f"--topic-share {self.topic_share}: must be in [0, 1]"),
            (self.topic_words >= 1, f"--topic-words {self.topic_words}: must be >= 1"),
            (self.topics * self.topic_words <= self.vocab_size // 2,
             f"--topics x --topic-words ({self.topics * self.topic_words}) must be at most half of --vocab-size"),
            (1 <= self.min_tokens <= self.median_tokens <= self.max_tokens,
             "need 1 <= --min-tokens <= --median-tokens <= --max-tokens"),
            (self.length_sigma >= 0, f"--length-sigma {self.length_sigma}: must be >= 0"),
            (self.val_fraction >= 0 and self.test_fraction >= 0 and self.val_fraction + self.test_fraction < 1,
             "--val-fraction and --test-fraction must be >= 0 and leave some train documents"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _syllables() -> list[str]:
    return [c + v for c in CONSONANTS for v in VOWELS]


def pseudo_words(n: int) -> list[str]:
    """The first `n` pseudo-words, shortest first: two syllables, then three, ...; English stop words skipped."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    syllables = _syllables()
    words: list[str] = []
    length = 2
    while len(words) < n:
        for index in range(len(syllables) ** length):
            word = "".join(syllables[(index // len(syllables) ** k) % len(syllables)] for k in range(length))
            if word not in ENGLISH_STOP_WORDS:
                words.append(word)
                if len(words) == n:
                    break
        length += 1
    return words


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


@dataclass
class SyntheticDocument:
    doc_id: int
    text: str
    labels: list[str]
    split: str

    def row(self) -> dict:
        return {"id": self.doc_id, "text": self.text, "labels": self.labels, "split": self.split}


class TextGenerator:
    """Documents of a `SynthConfig`, batch by batch; holds only vocabulary-sized tables."""

    def __init__(self, config: SynthConfig):
        config.validate()
        self.config = config
        self.words = np.array(pseudo_words(config.vocab_size), dtype=object)
        self.background = _zipf_cdf(config.vocab_size, config.zipf_s)
        self.in_topic = _zipf_cdf(config.topic_words, config.zipf_s)
        # Topic blocks start below the most frequent words (which every topic shares), in a seeded order.
        start = config.vocab_size - config.topics * config.topic_words
        order = np.random.default_rng([config.seed, 0]).permutation(config.topics)
        self.topic_start = start + order * config.topic_words
        self.label_names = [f"topic{t:02d}" for t in range(config.topics)]

    def batch(self, number: int) -> list[SyntheticDocument]:
        c = self.config
        first = number * BATCH
        n = min(BATCH, c.n_docs - first)
        rng = np.random.default_rng([c.seed, 1, number])
        lengths = np.clip(np.rint(np.exp(rng.normal(np.log(c.median_tokens), c.length_sigma, n))),
                          c.min_tokens, c.max_tokens).astype(np.int64)
        n_labels = rng.choice(LABELS_PER_DOC, size=n, p=LABELS_PER_DOC_P)
        order = np.argsort(rng.random((n, c.topics)), axis=1)  # a random order of the topics per document
        u = rng.random(n)
        splits = np.where(u < c.val_fraction, "val", np.where(u < c.val_fraction + c.test_fraction, "test", "train"))
        total = int(lengths.sum())
        doc_of_token = np.repeat(np.arange(n), lengths)
        from_topic = rng.random(total) < c.topic_share
        which_label = (rng.random(total) * n_labels[doc_of_token]).astype(np.int64)
        topic = order[doc_of_token, which_label]
        topic_word = self.topic_start[topic] + np.searchsorted(self.in_topic, rng.random(total), side="right")
        background_word = np.searchsorted(self.background, rng.random(total), side="right")
        word_ids = np.minimum(np.where(from_topic, topic_word, background_word), c.vocab_size - 1)
        tokens = self.words[word_ids]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [SyntheticDocument(first + i, " ".join(tokens[bounds[i]:bounds[i + 1]].tolist()),
                                  [self.label_names[t] for t in sorted(order[i, :n_labels[i]].tolist())],
                                  str(splits[i]))
                for i in range(n)]

    def documents(self) -> Iterator[SyntheticDocument]:
        for number in range((self.config.n_docs + BATCH - 1) // BATCH):
            yield from self.batch(number)


def file_names(config: SynthConfig) -> list[str]:
    return [f"part-{k:05d}-of-{config.files:05d}.{config.format}" for k in range(config.files)]


class _TableFile:
    """One output file, written as rows arrive (Parquet: one row group per generation batch at most)."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind, self.rows = path, kind, []
        self.handle = open(path, "w", encoding="utf-8", newline="\n") if kind == "jsonl" else None
        self.writer = None

    def add(self, document: SyntheticDocument) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(document.row(), ensure_ascii=False) + "\n")
        else:
            self.rows.append(document.row())
            if len(self.rows) >= BATCH:
                self.flush()

    def flush(self) -> None:
        if self.kind != "parquet" or not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.int64()), ("text", pa.string()), ("labels", pa.list_(pa.string())),
                            ("split", pa.string())])
        table = pa.Table.from_pylist(self.rows, schema=schema)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        self.writer.write_table(table)
        self.rows = []

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        else:
            self.flush()
            if self.writer is not None:
                self.writer.close()


def write_corpus(config: SynthConfig, progress_every: int = 100_000) -> list[Path]:
    """Generate the corpus into `config.out` (all files appear at once); returns the files in order."""
    config.validate()
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise ConfigError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not (out.is_dir() and (out / PARAMS_FILE).is_file()):
        raise ConfigError(f"{out}: exists and was not written by the generator (no {PARAMS_FILE}); --overwrite only "
                          "replaces those")
    generator = TextGenerator(config)
    names = file_names(config)
    with atomic_dir(out) as tmp:
        current, handle = -1, None
        for document in generator.documents():
            target = document.doc_id * config.files // config.n_docs
            if target != current:
                if handle is not None:
                    handle.close()
                current, handle = target, _TableFile(tmp / names[target], config.format)
            handle.add(document)
            if (document.doc_id + 1) % progress_every == 0:
                log(f"synth: {document.doc_id + 1:,} of {config.n_docs:,} documents")
        handle.close()
        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()
                  if k not in ("out", "overwrite")}
        (tmp / PARAMS_FILE).write_text(json.dumps({"generator": "corrhash-synthetic-text-v1", "params": params,
                                                    "files": names, "label_names": generator.label_names},
                                                   indent=2) + "\n")
    log(f"synth: wrote {config.n_docs:,} documents in {config.files} {config.format} file(s) to {out}")
    return [out / name for name in names]


# ---------------------------------------------------------------- the tests' small topic corpus

TOPIC_CORPUS_TOPICS = 8
TOPIC_CORPUS_SPLITS = {"train": 320, "val": 80, "test": 80}


def write_topic_corpus(path: Path, seed: int = 0) -> Path:
    """A JSONL text corpus with topic structure: each of 8 topics has 30 words of its own, 60 words are shared
    by all; a document draws 30-60 words from one or two topics (its labels) and the shared words, so codes
    that learn the topics retrieve by label. Splits as in TOPIC_CORPUS_SPLITS, in that order."""
    rng = np.random.default_rng(seed)
    topic_words = [[f"t{t}w{j}" for j in range(30)] for t in range(TOPIC_CORPUS_TOPICS)]
    shared = [f"common{j}" for j in range(60)]
    with open(path, "w") as handle:
        for split, count in TOPIC_CORPUS_SPLITS.items():
            for _ in range(count):
                topics = sorted(rng.choice(TOPIC_CORPUS_TOPICS, size=rng.integers(1, 3), replace=False).tolist())
                own = [w for t in topics for w in topic_words[t]]
                n = int(rng.integers(30, 61))
                words = [own[i] for i in rng.integers(0, len(own), size=n * 2 // 3)]
                words += [shared[i] for i in rng.integers(0, len(shared), size=n - len(words))]
                handle.write(json.dumps({"text": " ".join(rng.permutation(words)), "split": split,
                                         "labels": [f"topic{t}" for t in topics]}) + "\n")
    return path


# ---------------------------------------------------------------- TF-IDF in memory with the shape of TMC
# 21,519 train documents, 20,000 terms, about 114 non-zeros per row, 22 labels, 1-3 labels per document. Each
# label owns a block of "topic" terms; a document draws half its words from its labels' blocks and half from a
# Zipf-like background over the whole vocabulary. Values are sublinear TF-IDF with L2-normalized rows, as the
# real shards hold.

TMC_TRAIN, TMC_VAL, TMC_FEATURES, TMC_NNZ_PER_ROW, TMC_LABELS = 21_519, 3_498, 20_000, 114, 22
TOPIC_SHARE = 0.5
# Words drawn per row before duplicates merge; tuned so the mean non-zeros per row lands near the target.
DRAWS_PER_NONZERO = 1.4


def _labels(rng: np.random.Generator, n_docs: int, n_labels: int) -> np.ndarray:
    labels = np.zeros((n_docs, n_labels), dtype=bool)
    per_doc = rng.choice(LABELS_PER_DOC, size=n_docs, p=LABELS_PER_DOC_P)
    for count in LABELS_PER_DOC:
        rows = np.flatnonzero(per_doc == count)
        picks = np.argsort(rng.random((len(rows), n_labels)), axis=1)[:, :count]  # distinct labels per row
        labels[rows[:, None], picks] = True
    return labels


def _counts(rng: np.random.Generator, labels: np.ndarray, n_features: int, nnz_per_row: int) -> sp.csr_matrix:
    n_docs, n_labels = labels.shape
    draws = max(1, round(nnz_per_row * DRAWS_PER_NONZERO))
    block = n_features // n_labels
    # Topic words: a draw picks one of the document's labels, then a term in that label's block.
    own = np.argsort(~labels, axis=1, kind="stable")[:, :max(LABELS_PER_DOC)]  # each row's labels first
    n_own = labels.sum(axis=1)
    which = (rng.random((n_docs, draws)) * n_own[:, None]).astype(np.int64)
    topic_terms = own[np.arange(n_docs)[:, None], which] * block + rng.integers(0, block, (n_docs, draws))
    background = np.minimum(rng.zipf(1.3, (n_docs, draws)) - 1, n_features - 1)
    columns = np.where(rng.random((n_docs, draws)) < TOPIC_SHARE, topic_terms, background)
    rows = np.repeat(np.arange(n_docs), draws)
    counts = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, columns.ravel())),
                           shape=(n_docs, n_features))
    counts.sum_duplicates()
    return counts


def _tfidf(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    x = counts.copy()
    x.data = (1.0 + np.log(x.data)) * idf[x.indices]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x
    return sp.csr_matrix(x, dtype=np.float32)


def tmc_shaped_corpus(seed: int = 0, n_train: int = TMC_TRAIN, n_val: int = TMC_VAL,
                      n_features: int = TMC_FEATURES, nnz_per_row: int = TMC_NNZ_PER_ROW,
                      n_labels: int = TMC_LABELS) -> tuple[Split, Split]:
    """(train, val) splits; the same seed gives the same corpus."""
    rng = np.random.default_rng(seed)
    train_labels, val_labels = _labels(rng, n_train, n_labels), _labels(rng, n_val, n_labels)
    train_counts = _counts(rng, train_labels, n_features, nnz_per_row)
    val_counts = _counts(rng, val_labels, n_features, nnz_per_row)
    df = np.bincount(train_counts.indices, minlength=n_features)
    idf = (np.log((1 + n_train) / (1 + df)) + 1).astype(np.float32)  # the real recipe's smoothed idf
    return (Split("train", _tfidf(train_counts, idf), train_labels, np.arange(n_train)),
            Split("val", _tfidf(val_counts, idf), val_labels, np.arange(n_train, n_train + n_val)))
