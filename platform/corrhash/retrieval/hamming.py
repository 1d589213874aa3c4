"""Exact Hamming-distance search over packed binary codes.

Two backends give identical results (distances and indices):

* ``"faiss"``: ``faiss.IndexBinaryFlat`` (exhaustive popcount, multi-threaded).
  Its heap only admits a candidate strictly closer than the current worst and
  breaks heap ties by id, so among equal distances the lower database index
  wins -- ``tests/test_retrieval.py`` pins this against a stable argsort.
* ``"torch"``: codes become ±1 matrices, so ``q·d = m - 2·hamming`` and
  ``hamming = (m - q·dᵀ) / 2`` is one matmul per block.  ``torch.topk`` does not
  order ties, so it ranks a unique integer key ``distance * width + db_index``
  instead of the distance, which makes ties resolve to the lower index.

``"auto"`` picks torch when CUDA is available, faiss otherwise.  faiss is
imported on first use of its backend: the GPU path must run where it is not
installed (the GPU benchmark machine has none).

Memory is bounded by chunking: at most ``chunk`` queries × ``db_chunk`` database
codes are compared at once (torch), and faiss is fed ``chunk`` queries at a
time.  Results themselves are ``n_queries × k``.

``m`` below is ``8 * n_bytes``: pack_codes zero-pads the last byte on both
sides, and padding adds nothing to the XOR (faiss) and equally to ``m`` and
``q·d`` (torch), so codes of any bit count are searched correctly.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch

from corrhash.device import resolve_device
from corrhash.retrieval.codes import check_packed

BACKENDS = ("auto", "faiss", "torch")


PAIRS_PER_BLOCK = 1 << 22
"""Most pairs one block of `pairs_at_distance` may hold. A model whose codes collapse puts most of the database
in every query's tie group, and each pair costs about 50 bytes on its way through (faiss's range-search result,
the index arrays, the label check): 4M pairs keep an evaluation's transient memory near 200 MB, where the
default 1024 x 32768 block reached 2 GB (measured: bench/streaming.py, an untrained CorrSH at 100k documents)."""


def search_backend(device: torch.device | None = None) -> str:
    """The backend that searches codes on `device` (default: this machine's, ``resolve_device("auto")``):
    ``"torch"`` on CUDA, ``"faiss"`` elsewhere. The one place that decides; ``"auto"`` means this."""
    return "torch" if (resolve_device("auto") if device is None else device).type == "cuda" else "faiss"


def resolve_backend(backend: str) -> str:
    """Map ``"auto"`` to `search_backend` (``"torch"`` on CUDA machines, ``"faiss"`` elsewhere)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return search_backend() if backend == "auto" else backend


def hamming_topk(
    queries_packed: np.ndarray,
    database_packed: np.ndarray,
    k: int,
    backend: str = "auto",
    chunk: int = 1024,
    db_chunk: int = 32768,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest database codes per query by Hamming distance.

    Returns ``(distances int32 [n_q, k], indices int64 [n_q, k])`` sorted by
    distance, ties by ascending database index.  ``chunk`` is the number of
    queries per step (both backends); ``db_chunk`` the database codes per step
    (torch only: faiss scans the database with its own cache blocking).
    """
    queries, database = _check_pair(queries_packed, database_packed, chunk, db_chunk)
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= database.shape[0]):
        raise ValueError(f"k must be an int in [1, n_database={database.shape[0]}], got {k!r}")
    k = int(k)
    if resolve_backend(backend) == "faiss":
        return _faiss_topk(queries, database, k, chunk)
    return _torch_topk(queries, database, k, chunk, db_chunk)


def pairs_at_distance(
    queries_packed: np.ndarray,
    database_packed: np.ndarray,
    distance: np.ndarray,
    backend: str = "auto",
    chunk: int = 1024,
    db_chunk: int = 32768,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(query_idx, db_idx)`` int64 arrays of every pair whose Hamming
    distance equals ``distance[query_idx]``, scanning the whole database.

    Used for tie groups at a cut-off.  Cost is one more exhaustive pass
    (n_q × n_db comparisons); each yielded block holds at most
    ``chunk × db_chunk`` pairs, in both backends, and never more than
    ``PAIRS_PER_BLOCK`` (fewer queries per step where that product is larger).
    """
    queries, database = _check_pair(queries_packed, database_packed, chunk, db_chunk)
    chunk = max(1, min(chunk, PAIRS_PER_BLOCK // db_chunk))
    distance = np.asarray(distance)
    if distance.shape != (queries.shape[0],) or not np.issubdtype(distance.dtype, np.integer):
        raise ValueError(f"distance must be integer [n_queries={queries.shape[0]}], got {distance.dtype} {distance.shape}")
    if resolve_backend(backend) == "faiss":
        yield from _faiss_pairs_at_distance(queries, database, distance.astype(np.int64), chunk, db_chunk)
    else:
        yield from _torch_pairs_at_distance(queries, database, distance.astype(np.int64), chunk, db_chunk)


def _check_pair(queries, database, chunk, db_chunk) -> tuple[np.ndarray, np.ndarray]:
    queries = check_packed(queries, "queries_packed")
    database = check_packed(database, "database_packed")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} bytes per code, database {database.shape[1]}")
    if database.shape[0] == 0:
        raise ValueError("database is empty")
    if chunk < 1 or db_chunk < 1:
        raise ValueError(f"chunk and db_chunk must be >= 1, got {chunk}, {db_chunk}")
    return queries, database


# ---------------------------------------------------------------- faiss


def import_faiss():
    """faiss, imported on first use (the GPU machine has none) with its loader quiet."""
    # faiss logs every SIMD build it tries at INFO; Ray workers would print all of them.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def faiss_flat_index(database: np.ndarray) -> "faiss.IndexBinaryFlat":  # noqa: F821
    """An exact faiss index over packed codes; it can be kept and searched many times."""
    index = import_faiss().IndexBinaryFlat(8 * database.shape[1])  # faiss wants d in bits, d % 8 == 0
    index.add(database)
    return index


def faiss_search(index, queries: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(distances int32 [n_q, k], indices int64 [n_q, k]) from any faiss binary index, ``chunk`` queries a
    step so that faiss's per-call buffers stay bounded."""
    distances = np.empty((queries.shape[0], k), dtype=np.int32)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    for q0 in range(0, queries.shape[0], chunk):
        distances[q0 : q0 + chunk], indices[q0 : q0 + chunk] = index.search(queries[q0 : q0 + chunk], k)
    return distances, indices


def _faiss_topk(queries, database, k, chunk):
    return faiss_search(faiss_flat_index(database), queries, k, chunk)


def _faiss_pairs_at_distance(queries, database, distance, chunk, db_chunk):
    # faiss range search takes one radius per call and keeps dist < radius, so
    # queries are grouped by their target distance r and searched with r + 1;
    # the few hits closer than r (< k per query at a top-k cut) are dropped.
    # A small index per database chunk bounds the size of each result.
    for d0 in range(0, database.shape[0], db_chunk):
        index = faiss_flat_index(database[d0 : d0 + db_chunk])
        for q0 in range(0, queries.shape[0], chunk):
            block_distance = distance[q0 : q0 + chunk]
            for r in np.unique(block_distance):
                rows = np.flatnonzero(block_distance == r)
                lims, dist, ids = index.range_search(queries[q0 + rows], int(r) + 1)
                query_idx = np.repeat(q0 + rows, np.diff(lims).astype(np.int64))  # lims is uint64
                exact = dist == r
                yield query_idx[exact].astype(np.int64), ids[exact] + d0


# ---------------------------------------------------------------- torch
# float32 throughout: ±1 products and their sums are integers, exact in float32
# (also under TF32, whose inputs ±1 are exact and whose accumulation is fp32)
# as long as every value stays below 2**24.
_FLOAT32_EXACT = 2**24


def _to_plus_minus_one(packed: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [n, n_bytes] -> float32 ±1 [n, 8*n_bytes] in np.packbits (MSB-first) bit order."""
    data = torch.tensor(packed, device=device)  # copies: codes may be read-only (memmap)
    shifts = torch.arange(7, -1, -1, device=device, dtype=torch.uint8)
    bits = (data.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(data.shape[0], -1).to(torch.float32) * 2 - 1


def _torch_blocks(queries, database, chunk, db_chunk) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield ``(q0, d0, query_pm1_block, db_pm1_block)`` covering all pairs.

    Database chunks are the outer loop so each is converted to ±1 once; the
    queries (small) are converted once up front.
    """
    device = resolve_device("auto")
    query_pm1 = _to_plus_minus_one(queries, device)
    for d0 in range(0, database.shape[0], db_chunk):
        db_pm1 = _to_plus_minus_one(database[d0 : d0 + db_chunk], device)
        for q0 in range(0, queries.shape[0], chunk):
            yield q0, d0, query_pm1[q0 : q0 + chunk], db_pm1


def _torch_topk(queries, database, k, chunk, db_chunk):
    n_db, n_bits = database.shape[0], 8 * queries.shape[1]
    # Rank the unique key hamming * width + local_index, built by the matmul
    # itself: key = (n_bits/2) * width + local - (width/2) * (q·d).  It must stay
    # exact in float32, which caps the block width.
    db_chunk = max(1, min(db_chunk, _FLOAT32_EXACT // (n_bits + 1)))
    device = resolve_device("auto")
    # Running top-k as int64 keys distance * n_db + index: unique and ordered by
    # (distance, index), so merging blocks is a topk over concatenated keys.
    # The sentinel exceeds every real key and is always displaced (k <= n_db).
    best = torch.full((queries.shape[0], k), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    for q0, d0, query_block, db_block in _torch_blocks(queries, database, chunk, db_chunk):
        width = db_block.shape[0]
        offset = (n_bits / 2) * width + torch.arange(width, device=device, dtype=torch.float32)
        key = torch.addmm(offset, query_block, db_block.T, alpha=-width / 2)
        top = torch.topk(key, min(k, width), dim=1, largest=False, sorted=False).values.long()
        block_best = (top // width) * n_db + (top % width + d0)
        rows = slice(q0, q0 + query_block.shape[0])
        merged = torch.cat([best[rows], block_best], dim=1)
        best[rows] = torch.topk(merged, k, dim=1, largest=False, sorted=False).values
    best = torch.sort(best, dim=1).values.cpu()
    return (best // n_db).to(torch.int32).numpy(), (best % n_db).numpy()


def _torch_pairs_at_distance(queries, database, distance, chunk, db_chunk):
    device, n_bits = resolve_device("auto"), 8 * queries.shape[1]
    # hamming == r  <=>  q·d == n_bits - 2r: compare the matmul output directly.
    target_dot = torch.from_numpy(n_bits - 2 * distance).to(device=device, dtype=torch.float32)
    for q0, d0, query_block, db_block in _torch_blocks(queries, database, chunk, db_chunk):
        dot = query_block @ db_block.T
        query_idx, db_idx = (dot == target_dot[q0 : q0 + dot.shape[0], None]).nonzero(as_tuple=True)
        yield (query_idx + q0).cpu().numpy(), (db_idx + d0).cpu().numpy()
