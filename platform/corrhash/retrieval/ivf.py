"""Binary IVF for corrhash.retrieval.index: sub-linear, approximate Hamming search, calibrated to a recall.

The codes are split into ``nlist`` lists by their nearest centroid (faiss's k-means on a seeded sample) and a
query scans the ``nprobe`` lists nearest to it. ``nprobe`` is chosen when the index is built: the least nprobe
whose recall@k against exact search reaches TARGET_RECALL on calibration queries (given ones, or a seeded sample
of the index's own codes); `calibrate` returns that measurement for the index's sidecar.

Recall here is tie-aware: a returned code counts as correct if its distance is at most the k-th exact
distance for that query. At Hamming distance many codes tie at the k-th distance and exact search
keeps an arbitrary (lowest-index) subset of them, so plain id overlap would penalise correct answers.

`ivf_index` builds the searched faiss index from the centroids alone (the index saves those, never faiss's
file), assigning every code to the same list each time (nearest centroid, ties to the lower one).
"""

from __future__ import annotations

import math

import numpy as np

from corrhash.retrieval.codes import check_packed
from corrhash.retrieval.hamming import faiss_flat_index, faiss_search, hamming_topk, import_faiss

TARGET_RECALL = 0.95
CALIBRATION_K = 100
CALIBRATION_QUERIES = 256
TRAIN_POINTS_PER_LIST = 40  # faiss's k-means asks for at least 39 training points per centroid
RECALL_DEFINITION = "tie-aware: a hit is correct if its distance <= the k-th exact distance of its query"


def calibrate(codes: np.ndarray, seed: int, given_queries: np.ndarray | None):
    """(centroids, the faiss IVF index at the least nprobe reaching TARGET_RECALL, what was measured: nlist,
    nprobe and the recall with how it was measured) for `codes`. `seed` draws the training sample and, unless
    `given_queries` (packed codes like the queries to come), the calibration queries from the codes."""
    rng = np.random.default_rng(seed)
    nlist = default_nlist(len(codes))
    centroids = train_centroids(codes, nlist, rng)
    ivf = ivf_index(codes, centroids)
    if given_queries is None:  # a code of the index finds itself at distance 0: a slightly easy query
        queries = codes[rng.choice(len(codes), min(len(codes), CALIBRATION_QUERIES), replace=False)]
        sample = "codes of the index itself"
    else:
        queries = check_packed(given_queries, "calibration_queries")
        if queries.shape[1] != codes.shape[1] or len(queries) == 0:
            raise ValueError(f"calibration_queries: need codes of {codes.shape[1]} bytes, got shape "
                             f"{queries.shape}")
        sample = "queries given at build time"
    k = min(CALIBRATION_K, len(codes))
    nprobe, recall = least_nprobe(ivf, codes, queries, k)
    return centroids, ivf, {"nlist": nlist, "nprobe": nprobe, "recall": {
        "k": k, "value": round(recall, 4), "target": TARGET_RECALL, "queries": len(queries), "seed": seed,
        "sample": sample, "definition": RECALL_DEFINITION}}


def has_faiss() -> bool:
    """Whether faiss imports here (the GPU benchmark machine has none: auto stays flat there)."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def default_nlist(size: int) -> int:
    """About 2·sqrt(size) lists, with at least TRAIN_POINTS_PER_LIST codes each."""
    return max(1, min(round(2 * math.sqrt(size)), size // TRAIN_POINTS_PER_LIST))


def tie_aware_recall(distances: np.ndarray, positions: np.ndarray, exact_kth: np.ndarray) -> float:
    """Mean share of the k hits (per query) within the k-th exact distance; missing hits (-1) count as
    wrong. See the module for why ties make plain id overlap the wrong measure."""
    correct = (positions >= 0) & (distances <= np.asarray(exact_kth)[:, None])
    return float(correct.sum(axis=1).mean() / distances.shape[1])


def train_centroids(codes: np.ndarray, nlist: int, rng: np.random.Generator) -> np.ndarray:
    """nlist binary centroids [nlist, n_bytes] from faiss's k-means on a seeded sample of the codes."""
    faiss = import_faiss()
    sample = codes[np.sort(rng.choice(len(codes), min(len(codes), TRAIN_POINTS_PER_LIST * nlist), replace=False))]
    quantizer = faiss.IndexBinaryFlat(8 * codes.shape[1])
    trainer = faiss.IndexBinaryIVF(quantizer, 8 * codes.shape[1], nlist)
    trainer.train(sample)  # k-means on the codes as floats, centroids thresholded back to bits
    return faiss.vector_to_array(quantizer.xb).reshape(nlist, codes.shape[1]).copy()


def least_nprobe(ivf, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[int, float]:
    """(the least nprobe whose tie-aware recall@k reaches TARGET_RECALL, that recall). Recall cannot fall
    as nprobe grows (more lists, more candidates), and nprobe = nlist is exhaustive, so this terminates."""
    exact_kth = hamming_topk(queries, codes, k, backend="faiss")[0][:, -1]
    recall_at = {}

    def reaches(nprobe: int) -> bool:
        ivf.nprobe = nprobe
        distances, positions = faiss_search(ivf, queries, k)
        recall_at[nprobe] = tie_aware_recall(distances, positions, exact_kth)
        return recall_at[nprobe] >= TARGET_RECALL

    high = 1  # doubling finds an nprobe that reaches the target, bisection the least one below it
    while not reaches(high) and high < ivf.nlist:
        high = min(2 * high, ivf.nlist)
    low = high // 2  # does not reach it (or is 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if reaches(middle) else (middle, high)
    ivf.nprobe = high
    return high, recall_at[high]


def ivf_index(codes: np.ndarray, centroids: np.ndarray):
    """A faiss IndexBinaryIVF over `codes` with these centroids as its (already trained) quantizer."""
    faiss = import_faiss()
    quantizer = faiss_flat_index(centroids)
    ivf = faiss.IndexBinaryIVF(quantizer, 8 * codes.shape[1], len(centroids))
    ivf.add(codes)  # each code into the list of its nearest centroid
    ivf.quantizer_ref = quantizer  # the IVF index does not own its quantizer; keep it alive with it
    return ivf
