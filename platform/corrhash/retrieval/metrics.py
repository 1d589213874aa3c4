"""Precision@k for Hamming retrieval with multi-label relevance.

A database document is relevant to a query when they share at least one label.

Hamming distances are small integers, so many documents tie and "the top k"
is ambiguous whenever the tie group at the k-th distance spills over the cut.
Two numbers are reported:

* ``ordered``: precision of the top k with ties broken by database order
  (lower index first) -- deterministic, what ``hamming_topk`` returns.
* ``tie_aware``: expected precision when ties at the cut are broken uniformly
  at random.  Documents strictly closer than the k-th distance ``d_k`` count
  fully; the ``k - n_closer`` remaining slots are filled from the whole tie
  group at ``d_k`` (over the entire database, not just the returned top k), so
  each contributes that group's relevant fraction.

Cost: one ``hamming_topk`` plus one more exhaustive pass over the database to
count each query's tie group (``pairs_at_distance``) -- about twice a top-k
search -- plus label checks for the ``n_q * k`` retrieved pairs and the tie
pairs only.  Labels are compared as packed uint64 bitsets per pair; no dense
query × database relevance matrix is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from corrhash.retrieval.codes import check_packed
from corrhash.retrieval.hamming import hamming_topk, pairs_at_distance

# Pairs whose labels are compared at once; bounds the gathered bitset memory.
_PAIR_BLOCK = 1 << 20


@dataclass(frozen=True)
class PrecisionAtK:
    """Mean precision@k over queries, plus the per-query values."""

    k: int
    ordered: float
    tie_aware: float
    ordered_per_query: np.ndarray
    tie_aware_per_query: np.ndarray


def label_matrix(label_lists: Sequence[Sequence[int]], n_labels: int) -> np.ndarray:
    """Label-id lists (one per document) -> bool ``[n_docs, n_labels]``."""
    matrix = np.zeros((len(label_lists), n_labels), dtype=np.bool_)
    for row, labels in enumerate(label_lists):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
            raise ValueError(f"document {row}: label ids must be in [0, {n_labels}), got {labels.tolist()}")
        matrix[row, labels] = True
    return matrix


def precision_at_k(
    query_codes_packed: np.ndarray,
    query_labels: np.ndarray,
    db_codes_packed: np.ndarray,
    db_labels: np.ndarray,
    k: int = 100,
    backend: str = "auto",
    chunk: int = 1024,
    db_chunk: int = 32768,
) -> PrecisionAtK:
    """Ordered and tie-aware precision@k (see module docstring).

    Queries without any relevant document score 0 and are included in the mean.
    ``backend``, ``chunk`` and ``db_chunk`` are passed to the search functions.
    """
    query_codes = check_packed(query_codes_packed, "query_codes_packed")
    db_codes = check_packed(db_codes_packed, "db_codes_packed")
    query_words = _label_bitsets(query_labels, query_codes.shape[0], "query_labels")
    db_words = _label_bitsets(db_labels, db_codes.shape[0], "db_labels")
    if np.shape(query_labels)[1] != np.shape(db_labels)[1]:
        raise ValueError(f"label counts differ: queries {np.shape(query_labels)[1]}, database {np.shape(db_labels)[1]}")
    n_queries = query_codes.shape[0]

    distances, indices = hamming_topk(query_codes, db_codes, k, backend=backend, chunk=chunk, db_chunk=db_chunk)
    query_rows = np.repeat(np.arange(n_queries), k)
    relevant = _shares_label(query_words, db_words, query_rows, indices.ravel()).reshape(n_queries, k)
    ordered = relevant.mean(axis=1)

    cut = distances[:, -1]
    closer = distances < cut[:, None]
    n_closer = closer.sum(axis=1)
    relevant_closer = (relevant & closer).sum(axis=1)
    tie_total = np.zeros(n_queries, dtype=np.int64)
    tie_relevant = np.zeros(n_queries, dtype=np.int64)
    for q_idx, db_idx in pairs_at_distance(query_codes, db_codes, cut, backend=backend, chunk=chunk, db_chunk=db_chunk):
        tie_total += np.bincount(q_idx, minlength=n_queries)
        tie_relevant += np.bincount(q_idx[_shares_label(query_words, db_words, q_idx, db_idx)], minlength=n_queries)
    # The k-th result itself sits at the cut, so every tie group is non-empty.
    tie_aware = (relevant_closer + (k - n_closer) * tie_relevant / tie_total) / k

    return PrecisionAtK(
        k=k,
        ordered=float(ordered.mean()),
        tie_aware=float(tie_aware.mean()),
        ordered_per_query=ordered,
        tie_aware_per_query=tie_aware,
    )


def _label_bitsets(labels, n_rows: int, name: str) -> np.ndarray:
    """bool / 0-1 ``[n, n_labels]`` -> uint64 ``[n, ceil(n_labels/64)]`` bitsets."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != n_rows or labels.shape[1] == 0:
        raise ValueError(f"{name}: expected [{n_rows}, n_labels>=1] labels, got shape {labels.shape}")
    if labels.dtype != np.bool_:
        if not np.issubdtype(labels.dtype, np.number) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{name}: labels must be bool or 0/1, got dtype {labels.dtype}")
        labels = labels.astype(np.bool_)
    packed = np.packbits(labels, axis=1)
    padded = np.zeros((n_rows, -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def _shares_label(query_words, db_words, query_idx, db_idx) -> np.ndarray:
    """bool per pair: query ``query_idx[i]`` and document ``db_idx[i]`` share a label."""
    out = np.empty(len(query_idx), dtype=np.bool_)
    for p0 in range(0, len(query_idx), _PAIR_BLOCK):
        block = slice(p0, p0 + _PAIR_BLOCK)
        out[block] = (query_words[query_idx[block]] & db_words[db_idx[block]]).any(axis=1)
    return out
