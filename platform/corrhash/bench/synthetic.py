"""A seeded synthetic corpus with the shape of TMC (21,519 train documents, 20,000 terms, about 114
non-zeros per row, 22 labels, 1-3 labels per document), generated in memory for the benchmark.

Each label owns a block of "topic" terms; a document draws half its words from its labels' blocks and
half from a Zipf-like background over the whole vocabulary, so documents that share a label share
terms and validation precision means something. Values are sublinear TF-IDF with L2-normalized rows,
as the real shards hold.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from corrhash.data.shards import Split

TMC_TRAIN, TMC_VAL, TMC_FEATURES, TMC_NNZ_PER_ROW, TMC_LABELS = 21_519, 3_498, 20_000, 114, 22
TOPIC_SHARE = 0.5
# Words drawn per row before duplicates merge; tuned so the mean non-zeros per row lands near the target.
DRAWS_PER_NONZERO = 1.4


def _labels(rng: np.random.Generator, n_docs: int, n_labels: int) -> np.ndarray:
    labels = np.zeros((n_docs, n_labels), dtype=bool)
    per_doc = rng.choice([1, 2, 3], size=n_docs, p=[0.6, 0.3, 0.1])
    for count in (1, 2, 3):
        rows = np.flatnonzero(per_doc == count)
        picks = np.argsort(rng.random((len(rows), n_labels)), axis=1)[:, :count]  # distinct labels per row
        labels[rows[:, None], picks] = True
    return labels


def _counts(rng: np.random.Generator, labels: np.ndarray, n_features: int, nnz_per_row: int) -> sp.csr_matrix:
    n_docs, n_labels = labels.shape
    draws = max(1, round(nnz_per_row * DRAWS_PER_NONZERO))
    block = n_features // n_labels
    # Topic words: a draw picks one of the document's labels, then a term in that label's block.
    own = np.argsort(~labels, axis=1, kind="stable")[:, :3]  # each row's labels first
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
