"""The document graph: each train document's nearest neighbours by cosine similarity over its TF-IDF row, the
neighbourhood information STH (models/sth.py) and the `-nbr` VAEs (models/neighbours.py) learn from.

Two searches give each document its k most similar others (pairs with cosine <= 0, no shared word, are never
neighbours, so a document may have fewer than k):
- exact: a chunked sparse X @ X^T with a top-k per row: O(n^2) time, O(chunk x n) memory (one dense chunk of
  similarities at a time), never a dense copy of the corpus. STH's search, unchanged.
- approximate: NN-descent (Dong, Moses and Li, WWW 2011) through pynndescent, which searches sparse cosine
  directly, in about O(n^1.14) distance evaluations. Its recall against exact is measured by
  `bench/graph.py` and tested on small data.
`method="auto"` is exact up to `EXACT_MAX_DOCS` documents and approximate above.

The directed lists become one symmetric graph W [n, n] (float64 CSR, zero diagonal, W_ij = cos(x_i, x_j)):
- "knn": an edge where j is among i's k neighbours or i among j's (STH's local-similarity matrix),
- "mutual": only where both are (a sparser graph that drops hubs' one-sided edges).
"""

from __future__ import annotations

import builtins
import sys
import types
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp

from corrhash.models.config import GRAPH_KINDS
SEARCH_METHODS = ("auto", "exact", "approximate")
EXACT_MAX_DOCS = 30_000
"""`auto` searches exactly up to this many documents (measured by bench/graph.py: exact takes about as long as
NN-descent at 20k documents on 2 cores and grows as n^2 above)"""
CHUNK_ENTRIES = 1 << 22
"""dense similarity entries per chunk of the exact search (the chunk's float64 similarities, their
negation and argpartition's int64 indices: about 100 MiB at this size)"""


def unit_rows(features: sp.spmatrix) -> sp.csr_matrix:
    """float64 CSR with every non-zero row scaled to L2 norm 1 (so cosine = dot product); zero rows stay zero."""
    x = sp.csr_matrix(features, dtype=np.float64)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x


def exact_neighbours(features: sp.spmatrix, k: int, chunk_rows: int | None = None,
                     queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([n, k] int64 neighbour ids, [n, k] float64 cosines) of each row's k most similar other rows; an id is -1
    where the cosine is <= 0 (no such neighbour). A tie at the k-th similarity is broken by argpartition
    (deterministic, not by index). With k >= n - 1 the lists are n wide (every row; its own id is -1).
    `queries`: only these rows' lists (in that order), e.g. a sample to measure an approximate search's recall."""
    x = unit_rows(features)
    n = x.shape[0]
    xt = x.T.tocsc()
    k = min(k, n - 1)
    queries = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ENTRIES // max(n, 1))
    width = k if k < n - 1 else n  # every other row: the n columns hold the row itself too, never kept
    ids = np.full((len(queries), width), -1, dtype=np.int64)
    sims = np.zeros((len(queries), width), dtype=np.float64)
    for start in range(0, len(queries), chunk_rows):
        stop = min(len(queries), start + chunk_rows)
        chunk = (x[queries[start:stop]] @ xt).toarray()
        local = np.arange(stop - start)
        chunk[local, queries[start:stop]] = -np.inf  # a document is not its own neighbour
        if k < n - 1:
            top = np.argpartition(-chunk, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(n), (stop - start, n))
        picked = np.take_along_axis(chunk, top, axis=1)
        keep = picked > 0
        ids[start:stop] = np.where(keep, top, -1)
        sims[start:stop] = np.where(keep, picked, 0.0)
    return ids, sims


_PRINT = builtins.print if isinstance(builtins.print, types.BuiltinFunctionType) else None


def _real_print():
    """The interpreter's own print function, even where it was replaced (Ray's tqdm_ray patches it in a driver that
    showed a Ray Data bar, Ray Train in its workers; both keep the original as a module global)."""
    if isinstance(builtins.print, types.BuiltinFunctionType):
        return builtins.print
    if _PRINT is not None:
        return _PRINT
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, types.BuiltinFunctionType) and value.__name__ == "print" \
                    and getattr(value, "__self__", None) is builtins:
                return value
    return None


@contextmanager
def _builtin_print():
    """numba compiles pynndescent's kernels on first use and types `print` inside one of them: with a replaced
    print it fails ("Untyped global name 'print'", seen in a process where Ray had patched it). Put the real one
    back while the search runs."""
    patched, real = builtins.print, _real_print()
    if real is not None:
        builtins.print = real
    try:
        yield
    finally:
        builtins.print = patched


def approximate_neighbours(features: sp.spmatrix, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`exact_neighbours`' result found by NN-descent (pynndescent, cosine metric on the sparse rows): the same
    form, each row's list possibly missing some of its true k nearest."""
    x = sp.csr_matrix(unit_rows(features), dtype=np.float32)
    n = x.shape[0]
    k = min(k, n - 1)
    with _builtin_print():
        import pynndescent  # numba-compiled on import and first use: imported only when an approximate graph is built

        index = pynndescent.NNDescent(x, metric="cosine", n_neighbors=min(k + 1, n), random_state=seed,
                                      compressed=True, n_jobs=1)
        found, distances = index.neighbor_graph
    found, similarity = found.astype(np.int64), 1.0 - distances.astype(np.float64)
    # Drop each row's own id (usually first, but a duplicate document may come first) and keep k of the rest.
    valid = (found >= 0) & (found != np.arange(n)[:, None]) & (similarity > 1e-9)
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    found = np.take_along_axis(found, order, axis=1)
    similarity = np.take_along_axis(similarity, order, axis=1)
    keep = np.take_along_axis(valid, order, axis=1)
    return np.where(keep, found, -1), np.where(keep, similarity, 0.0)


def symmetric_graph(ids: np.ndarray, sims: np.ndarray, kind: str = "knn") -> sp.csr_matrix:
    """The [n, n] float64 CSR graph of the directed lists (see the module docstring for the kinds)."""
    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; use one of {', '.join(GRAPH_KINDS)}")
    n = ids.shape[0]
    keep = ids >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)[keep]
    directed = sp.csr_matrix((sims[keep], (rows, ids[keep])), shape=(n, n))
    if kind == "knn":
        return directed.maximum(directed.T).tocsr()
    return directed.minimum(directed.T).tocsr()  # cosines are > 0, so the minimum is 0 unless both directions exist


def neighbours(features: sp.spmatrix, k: int, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The directed k-nearest lists by `method` (one of SEARCH_METHODS)."""
    if method not in SEARCH_METHODS:
        raise ValueError(f"unknown search method {method!r}; use one of {', '.join(SEARCH_METHODS)}")
    if method == "auto":
        method = "exact" if features.shape[0] <= EXACT_MAX_DOCS else "approximate"
    return exact_neighbours(features, k) if method == "exact" else approximate_neighbours(features, k, seed)


def resolved_method(method: str, n_docs: int) -> str:
    """The search `method` names for a corpus of `n_docs` documents ('auto' resolved)."""
    return method if method != "auto" else ("exact" if n_docs <= EXACT_MAX_DOCS else "approximate")


def knn_graph(features: sp.spmatrix, k: int, kind: str = "knn", method: str = "exact", seed: int = 0) -> sp.csr_matrix:
    """Symmetric cosine graph of `features`' rows: `neighbours` then `symmetric_graph`."""
    return symmetric_graph(*neighbours(features, k, method, seed), kind)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact lists' neighbours (ids >= 0) that `found` also lists, over the rows of `exact`."""
    hits = total = 0
    for mine, truth in zip(found, exact):
        truth = truth[truth >= 0]
        hits += np.isin(truth, mine[mine >= 0]).sum()
        total += len(truth)
    return hits / total if total else 1.0
