"""The document graph: each train document's nearest neighbours by cosine similarity over its TF-IDF row, the
neighbourhood information STH (models/sth.py) and the `-nbr` VAEs (models/neighbours.py) learn from.

`neighbours(features, k, method)` gives each document its k most similar others (pairs with cosine <= 0, no
shared word, are never neighbours, so a document may have fewer than k), as [n, k] ids and cosines sorted from
the most similar. The query rows are cut into blocks; each block is one call of a block function, and `run_blocks`
decides where the calls run (`map`, one after another, by default; Ray tasks across a cluster in
runs/graph_build.py). Three searches:
- exact: each block's sparse X_b @ X^T with a top-k per row: O(n^2) time, O(block x n) memory.
- pruned: the candidates of a query are the documents that share one of its terms with large weight (an
  inverted index that keeps only each document's `index_terms` heaviest terms, searched from the query's whole
  row and, the other way round, the query's heaviest terms searched in the whole index); the `candidates` best by
  that partial dot product are then scored by their exact cosine and the k best kept. Every listed cosine is
  exact; a true neighbour is missed only when its cosine comes from many light terms. This is the candidate step
  of L2Knng (Anastasiu and Karypis, "L2Knng: fast exact k-nearest neighbor graph construction with L2-norm
  pruning", CIKM 2015), without its exact filtering pass. `index_terms` and `candidates` are chosen by
  measurement: the cheapest rung of PRUNED_LADDER whose tie-aware recall (`search_quality`) on a sample of query
  rows, against their exact lists, reaches the target (0.95).
  Measured on 20ng-18828 and Reuters (bench/graph.py): dense projections (random or truncated SVD, searched
  with faiss) need ~800 candidates of 10k documents for 0.9 recall, and clustering (IVF, spherical k-means)
  ~0.7 at a fifth of the corpus scored; text neighbours hinge on shared rare words, which this index keeps.
- nndescent: NN-descent (Dong, Moses and Li, WWW 2011) through pynndescent, an optional extra
  (`pip install 'corrhash[nndescent]'`; ~200 MiB with numba and llvmlite), kept for comparison.
`method="auto"` is exact up to `EXACT_MAX_DOCS` documents and pruned above.

The directed lists become one symmetric graph W [n, n] (float64 CSR, zero diagonal, W_ij = cos(x_i, x_j)):
- "knn": an edge where j is among i's k neighbours or i among j's (STH's local-similarity matrix),
- "mutual": only where both are (a sparser graph that drops hubs' one-sided edges).
Lists searched for a larger k give the graph of any smaller k by keeping each row's first k (they are sorted),
which is how one cached search serves every k (train/neighbours.py).
"""

from __future__ import annotations

import builtins
import sys
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from corrhash.errors import ConfigError
from corrhash.log import log
from corrhash.models.config import GRAPH_KINDS, GRAPH_SEARCHES

SEARCH_METHODS = GRAPH_SEARCHES
EXACT_MAX_DOCS = 30_000
"""`auto` searches exactly up to this many documents and with the pruned index above (bench/graph.py)"""
BLOCK_ENTRIES = 1 << 22
"""dense similarity entries per block of the exact search (the block's float64 similarities, their negation and
argpartition's int64 indices: about 100 MiB at this size); the pruned search's blocks hold about as many
candidate pairs"""
DEVICE_BLOCK_ENTRIES = 1 << 28
"""similarity entries per block of the torch search on a GPU (1 GiB of float32: a few hundred queries at 1M)"""
PRUNED_LADDER = ((20, 8), (30, 12), (40, 16), (60, 24), (90, 36))
"""(index terms per document, candidates per query as a multiple of k), tried cheapest first"""
TARGET_RECALL = 0.95
RECALL_SAMPLE = 300
"""query rows whose exact lists measure the pruned search's recall"""
JOB_ROWS = 8192
"""most query rows a job (one call of `run_blocks`' function: one Ray task) searches, in blocks of bounded memory"""
MIN_JOBS, MIN_JOB_ROWS = 32, 256
"""a search is cut into at least MIN_JOBS jobs (of at least MIN_JOB_ROWS rows), so a cluster's CPUs share it"""
TIE_TOLERANCE = 1e-6
"""a found cosine this close below the exact k-th counts as a tie (float32 rows)"""

BlockRunner = Callable[[Callable[[dict, dict], tuple], dict, list], list]
"""run_blocks(function, shared, jobs) -> [function(shared, job) for job in jobs], wherever it runs them"""


def run_here(function: Callable[[dict, dict], tuple], shared: dict, jobs: list) -> list:
    """The default `run_blocks`: every block in this process, one after another, a line every tenth of them."""
    results = []
    for i, job in enumerate(jobs):
        results.append(function(shared, job))
        if len(jobs) >= 10 and (i + 1) % (len(jobs) // 10) == 0 and i + 1 < len(jobs):
            log(f"document graph: {i + 1}/{len(jobs)} blocks searched")
    return results


def unit_rows(features: sp.spmatrix) -> sp.csr_matrix:
    """float64 CSR with every non-zero row scaled to L2 norm 1 (so cosine = dot product); zero rows stay zero."""
    x = sp.csr_matrix(features, dtype=np.float64)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x


def _width(k: int, n: int) -> int:
    return min(k, n - 1)


def _keep_top(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """([n_rows, k] ids, cosines) of each row's k largest positive (row, col, value) entries, most similar first;
    -1 / 0 where a row has fewer."""
    ids = np.full((n_rows, k), -1, dtype=np.int64)
    sims = np.zeros((n_rows, k), dtype=np.float64)
    positive = values > 0
    rows, cols, values = rows[positive], cols[positive], values[positive]
    # by row, then most similar first: one float key (cosines are at most 1, so a row's keys never reach the next's)
    order = np.argsort(rows * 4.0 - values)
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < k
    ids[rows[keep], rank[keep]] = cols[keep]
    sims[rows[keep], rank[keep]] = values[keep]
    return ids, sims


def _exact_rows(shared: dict, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, xt, k = shared["x"], shared["xt"], shared["k"]
    block = (x[queries] @ xt).toarray()
    block[np.arange(len(queries)), queries] = -np.inf  # a document is not its own neighbour
    n = block.shape[1]
    top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), block.shape)
    picked = np.take_along_axis(block, top, axis=1)
    rows = np.broadcast_to(np.arange(len(queries))[:, None], top.shape)
    return _keep_top(rows.ravel(), top.ravel(), picked.ravel(), len(queries), k)


def _in_blocks(search_rows: Callable, shared: dict, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`search_rows` over `queries` in blocks of shared["rows_per_block"] rows (bounded memory), stacked."""
    step = shared["rows_per_block"]
    return _stack([search_rows(shared, queries[start:start + step]) for start in range(0, len(queries), step)],
                  shared["k"])


def _exact_block(shared: dict, job: dict) -> tuple[np.ndarray, np.ndarray]:
    return _in_blocks(_exact_rows, shared, job["queries"])


def _jobs(queries: np.ndarray) -> list[dict]:
    """At least MIN_JOBS jobs where there are rows enough (so a cluster's CPUs share them), at most JOB_ROWS rows each."""
    rows = min(JOB_ROWS, max(MIN_JOB_ROWS, -(-len(queries) // MIN_JOBS)))
    return [{"queries": queries[start:start + rows]} for start in range(0, len(queries), rows)]


def _stack(results: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    if not results:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k))
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def exact_neighbours(features: sp.spmatrix, k: int, chunk_rows: int | None = None,
                     queries: np.ndarray | None = None, run_blocks: BlockRunner = run_here
                     ) -> tuple[np.ndarray, np.ndarray]:
    """([n, k] int64 neighbour ids, [n, k] float64 cosines) of each row's k most similar other rows, most similar
    first; an id is -1 where the cosine is <= 0 (no such neighbour). With k >= n - 1 the lists hold every other
    row (n - 1 wide). `queries`: only these rows' lists (in that order), e.g. a sample that measures an
    approximate search; `chunk_rows`: rows per block (default: BLOCK_ENTRIES similarities a block)."""
    x = unit_rows(features)
    n = x.shape[0]
    k = _width(k, n)
    queries = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    shared = {"x": x, "xt": x.T.tocsr(), "k": k, "rows_per_block": chunk_rows or max(1, BLOCK_ENTRIES // max(n, 1))}
    return _stack(run_blocks(_exact_block, shared, _jobs(queries)), k)


def torch_exact_neighbours(features: sp.spmatrix, k: int, device: str = "cuda", queries: np.ndarray | None = None,
                           rows_per_block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`exact_neighbours` as a blocked torch product on `device` (a GPU where there is one): the corpus's rows on
    the device as a sparse CSR tensor, each block of queries dense, X @ Q_b^T and a top-k per query. Cosines in
    float32, so a tie at the k-th may break otherwise than the float64 search."""
    import torch

    x = sp.csr_matrix(unit_rows(features), dtype=np.float32)
    n = x.shape[0]
    k = _width(k, n)
    queries = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    entries = DEVICE_BLOCK_ENTRIES if str(device).startswith("cuda") else BLOCK_ENTRIES
    rows_per_block = rows_per_block or max(1, entries // max(n, 1))
    corpus = torch.sparse_csr_tensor(torch.from_numpy(x.indptr.astype(np.int64)),
                                     torch.from_numpy(x.indices.astype(np.int64)), torch.from_numpy(x.data),
                                     size=x.shape).to(device)
    ids, sims = [], []
    for start in range(0, len(queries), rows_per_block):
        block = queries[start:start + rows_per_block]
        dense = torch.from_numpy(x[block].toarray()).to(device)
        similarity = (corpus @ dense.T).T  # [block, n]
        similarity[torch.arange(len(block), device=device), torch.from_numpy(block).to(device)] = -float("inf")
        values, columns = torch.topk(similarity, k, dim=1)
        values, columns = values.cpu().numpy().astype(np.float64), columns.cpu().numpy()
        keep = values > 0
        ids.append(np.where(keep, columns, -1))
        sims.append(np.where(keep, values, 0.0))
    return _stack(list(zip(ids, sims)), k)


def heaviest_terms(x: sp.csr_matrix, m: int) -> sp.csr_matrix:
    """`x` with only each row's m largest entries kept."""
    counts = np.diff(x.indptr)
    rows = np.repeat(np.arange(x.shape[0]), counts)
    order = np.lexsort((-x.data, rows))
    rank = np.arange(len(order)) - x.indptr[rows[order]]
    keep = np.sort(order[rank < m])
    return sp.csr_matrix((x.data[keep], x.indices[keep], np.concatenate([[0], np.cumsum(np.minimum(counts, m))])),
                         shape=x.shape)


def _pruned_rows(shared: dict, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, xt, heavy, heavy_t, k = shared["x"], shared["xt"], shared["heavy"], shared["heavy_t"], shared["k"]
    partial = (x[queries] @ heavy_t + heavy[queries] @ xt).tocsr()
    partial = _without_self(partial, queries)
    pair_rows, pair_cols = _top_per_row(partial, shared["candidates"])
    # exact cosines of the pairs: each candidate row's entries times the query's, read from the dense query rows
    dense = x[queries].toarray()
    candidates = x[pair_cols]
    owner = np.repeat(pair_rows, np.diff(candidates.indptr))
    products = candidates.data * dense[owner, candidates.indices]
    exact = np.add.reduceat(products, candidates.indptr[:-1]) if len(products) else np.zeros(0, np.float32)
    exact[np.diff(candidates.indptr) == 0] = 0.0  # reduceat gives the next row's first entry for an empty row
    return _keep_top(pair_rows, pair_cols, exact.astype(np.float64), len(queries), k)


def _without_self(partial: sp.csr_matrix, queries: np.ndarray) -> sp.csr_matrix:
    """`partial` (rows: the block's queries, columns: every document) without each query's own column."""
    rows = np.repeat(np.arange(partial.shape[0]), np.diff(partial.indptr))
    keep = partial.indices != queries[rows]
    return sp.csr_matrix((partial.data[keep], partial.indices[keep],
                          np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=partial.shape[0]))])),
                         shape=partial.shape)


def _top_per_row(matrix: sp.csr_matrix, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of each CSR row's c largest entries (all of a row with c or fewer), unordered. Rows longer
    than c are laid out padded and partitioned: linear in their entries, where a sort is not."""
    lengths = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), lengths)
    short = lengths[rows] <= c
    out_rows, out_cols = [rows[short]], [matrix.indices[short]]
    long_rows = np.flatnonzero(lengths > c)
    if len(long_rows):
        width = lengths[long_rows].max()
        values = np.full((len(long_rows), width), -np.inf, dtype=np.float32)
        columns = np.zeros((len(long_rows), width), dtype=np.int64)
        slot = np.full(matrix.shape[0], -1)
        slot[long_rows] = np.arange(len(long_rows))
        entries = ~short
        position = np.arange(len(rows))[entries] - matrix.indptr[rows[entries]]
        values[slot[rows[entries]], position] = matrix.data[entries]
        columns[slot[rows[entries]], position] = matrix.indices[entries]
        top = np.argpartition(-values, c - 1, axis=1)[:, :c]
        out_rows.append(np.repeat(long_rows, c))
        out_cols.append(np.take_along_axis(columns, top, axis=1).ravel())
    return np.concatenate(out_rows), np.concatenate(out_cols)


def _pruned_block(shared: dict, job: dict) -> tuple[np.ndarray, np.ndarray]:
    return _in_blocks(_pruned_rows, shared, job["queries"])


@dataclass
class PrunedChoice:
    """What the pruned search used and measured."""

    index_terms: int
    candidates: int
    recall: float
    """tie-aware recall@k on the sampled rows (`search_quality`)"""
    sample: int
    tried: list = field(default_factory=list)
    """every rung measured: (index_terms, candidates, recall)"""
    exact: bool = False
    """True when the lists were searched exactly: a rung cost more CPU than the exact search on the sample"""


def pruned_neighbours(features: sp.spmatrix, k: int, index_terms: int | None = None,
                      candidates: int | None = None, target_recall: float = TARGET_RECALL, seed: int = 0,
                      run_blocks: BlockRunner = run_here) -> tuple[np.ndarray, np.ndarray, PrunedChoice]:
    """`exact_neighbours`' result found through the pruned inverted index (module docstring), with what was chosen
    and measured. `index_terms` and `candidates` given: used as they are, recall still measured. Climbing the
    ladder stops at the first rung that reaches `target_recall`; a rung that costs more CPU on the sample than the
    exact search of the same rows ends the climb with an exact search instead (measured at 1M synthetic documents:
    the rung reaching 0.95 cost 2.3 times the exact search)."""
    x = unit_rows(features).astype(np.float32)
    n = x.shape[0]
    k = _width(k, n)
    xt = x.T.tocsr()
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(RECALL_SAMPLE, n), replace=False))
    started = time.process_time()
    truth = exact_neighbours(x, k, queries=sample)[1]  # a few hundred rows: here, not worth shipping the corpus
    exact_cpu = time.process_time() - started
    ladder = [(index_terms, candidates)] if index_terms and candidates else \
        [(m, max(k, multiple * k)) for m, multiple in PRUNED_LADDER]
    tried = []
    for m, c in ladder:
        heavy = heaviest_terms(x, m)
        # a block scores each row's c candidates on both rows' terms: about BLOCK_ENTRIES / 4 products
        per_block = max(1, BLOCK_ENTRIES // (4 * c * max(1, round(x.nnz / max(n, 1)))))
        shared = {"x": x, "xt": xt, "heavy": heavy, "heavy_t": heavy.T.tocsr(), "k": k, "candidates": c,
                  "rows_per_block": per_block}
        started = time.process_time()
        found = _pruned_block(shared, {"queries": sample})[1]
        cpu = time.process_time() - started
        measured = search_quality(found, truth)["recall"]
        tried.append((m, c, measured))
        log(f"document graph: pruned index, {m} terms a document, {c} candidates a query: recall@{k} "
            f"{measured:.4f} on {len(sample)} sampled documents, {cpu / exact_cpu:.2f}x the exact search's CPU")
        if cpu >= exact_cpu and len(ladder) > 1:  # this rung or a wider one: the exact search is cheaper
            log(f"document graph: the pruned index reaching recall {measured:.4f} costs more than the exact "
                f"search here; searching exactly")
            ids, sims = exact_neighbours(x, k, run_blocks=run_blocks)
            return ids, sims, PrunedChoice(0, 0, 1.0, len(sample), tried, exact=True)
        if measured >= target_recall:
            break
    else:
        if len(ladder) > 1:
            log(f"document graph: no rung reached recall {target_recall}; using the widest "
                f"({tried[-1][0]} terms, {tried[-1][1]} candidates, recall {tried[-1][2]:.4f})")
    ids, sims = _stack(run_blocks(_pruned_block, shared, _jobs(np.arange(n))), k)
    return ids, sims, PrunedChoice(m, c, tried[-1][2], len(sample), tried)


def search_quality(found_sims: np.ndarray, exact_sims: np.ndarray) -> dict:
    """Tie-aware recall of found lists against exact ones (row for row) and their mean cosines. A found
    neighbour counts when its cosine is at least the exact k-th (tolerance TIE_TOLERANCE): where many documents
    tie at the k-th cosine, any of them is a right answer. Each row counts at most as many hits as its exact list
    has neighbours (cosine > 0)."""
    exact_valid = exact_sims > 0
    n_exact = exact_valid.sum(axis=1)
    kth = np.where(n_exact > 0, np.where(exact_valid, exact_sims, np.inf).min(axis=1), np.inf)
    hits = np.minimum(((found_sims > 0) & (found_sims >= kth[:, None] - TIE_TOLERANCE)).sum(axis=1), n_exact)
    total = n_exact.sum()
    return {"recall": float(hits.sum() / total) if total else 1.0,  # means over every slot, an empty one 0
            "mean_cosine_found": float(found_sims.mean()) if found_sims.size else 0.0,
            "mean_cosine_exact": float(exact_sims.mean()) if exact_sims.size else 0.0}


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


def nndescent_neighbours(features: sp.spmatrix, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`exact_neighbours`' result found by NN-descent (pynndescent, cosine metric on the sparse rows): the same
    form, each row's list possibly missing some of its true k nearest. Needs the `nndescent` extra."""
    x = sp.csr_matrix(unit_rows(features), dtype=np.float32)
    n = x.shape[0]
    k = _width(k, n)
    with _builtin_print():
        try:  # numba-compiled on import and first use: imported only when this search runs
            import pynndescent
        except ImportError as exc:
            raise ConfigError("the nndescent graph search needs pynndescent, an optional extra: "
                              "pip install 'corrhash[nndescent]' (or use --graph-search pruned)") from exc
        index = pynndescent.NNDescent(x, metric="cosine", n_neighbors=min(k + 1, n), random_state=seed,
                                      compressed=True, n_jobs=1)
        found, distances = index.neighbor_graph
    found, similarity = found.astype(np.int64), 1.0 - distances.astype(np.float64)
    valid = (found >= 0) & (found != np.arange(n)[:, None]) & (similarity > 1e-9)  # its own id is usually first
    rows = np.broadcast_to(np.arange(n)[:, None], found.shape)
    return _keep_top(rows[valid], found[valid], similarity[valid], n, k)


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


def resolved_method(method: str, n_docs: int) -> str:
    """The search `method` names for a corpus of `n_docs` documents ('auto' resolved)."""
    if method not in SEARCH_METHODS:
        raise ConfigError(f"unknown graph search {method!r}; use one of {', '.join(SEARCH_METHODS)}")
    return method if method != "auto" else ("exact" if n_docs <= EXACT_MAX_DOCS else "pruned")


def neighbours(features: sp.spmatrix, k: int, method: str = "auto", seed: int = 0,
               run_blocks: BlockRunner = run_here) -> tuple[np.ndarray, np.ndarray, dict]:
    """The directed k-nearest lists by `method` (one of SEARCH_METHODS), and what the search chose and measured."""
    method = resolved_method(method, features.shape[0])
    if method == "exact":
        return (*exact_neighbours(features, k, run_blocks=run_blocks), {"method": "exact"})
    if method == "nndescent":
        return (*nndescent_neighbours(features, k, seed), {"method": "nndescent"})
    ids, sims, choice = pruned_neighbours(features, k, seed=seed, run_blocks=run_blocks)
    return ids, sims, {"method": "pruned", "index_terms": choice.index_terms, "candidates": choice.candidates,
                       "sampled_recall": choice.recall, "recall_sample": choice.sample, "tried": choice.tried,
                       "searched_exactly": choice.exact}


def first_k(ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The lists of a smaller k from lists searched for a larger one (each row's first k: they are sorted)."""
    return ids[:, :k], sims[:, :k]


def knn_graph(features: sp.spmatrix, k: int, kind: str = "knn", method: str = "exact", seed: int = 0) -> sp.csr_matrix:
    """Symmetric cosine graph of `features`' rows: `neighbours` then `symmetric_graph`."""
    ids, sims, _ = neighbours(features, k, method, seed)
    return symmetric_graph(ids, sims, kind)
