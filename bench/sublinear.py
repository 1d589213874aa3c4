"""Flat against sub-linear (binary IVF) Hamming search at millions of 64-bit codes: queries/s and recall@100.

Two kinds of codes, because what a sub-linear index can do depends on them:

* ``random``: uniform random bits. No cluster structure at all: the 100th nearest code of a query sits
  only ~15-17 bits away of an average 32, and any partition of the space splits a query's neighbours
  across many cells. The worst case for every sub-linear index.
* ``clustered``: ``CENTRES`` random centre codes, each code a centre with every bit flipped with
  probability ``FLIP``. Learned hash codes are like this (documents of a topic share most bits).
* model codes (``run_model_codes``): what a CorrSH model trained on a prepared corpus makes of it, the
  check of that claim.

For each, both indexes are built as serving builds them (``HammingIndex(kind="flat")`` and
``kind="ivf"``, whose nprobe is calibrated at build time to recall >= 0.95 on 256 calibration queries
drawn like the codes, as a validation split would be), then other held-out queries (also drawn like the
codes, in neither the index nor the calibration set) are searched at k=100 with one faiss
thread and with all of them. Queries/s is the best of ``REPEATS`` timings (the machine may be shared).

Recall@100 is tie-aware (``corrhash.retrieval.ivf.tie_aware_recall``): a returned code counts if its
distance is at most the query's 100th exact distance. Random codes tie massively at that distance,
and exact search keeps an arbitrary (lowest-index) subset of the tie, so id overlap would understate it.

Measured before choosing IVF for corrhash.retrieval.index (1M codes, k=100, one thread, 2 shared cores, so
rough): faiss IndexBinaryMultiHash (4 tables of 16 bits) needs nflip=3 for recall 0.99 on random codes
and is then ~20x *slower* than flat, since at k=100 the 100th neighbour is too far away for substring
hashing to prune; IndexBinaryHNSW (M=16, ef=100) reached recall 0.95 on clustered codes at ~8,800 q/s,
about 5x flat's ~1,850 where IVF does ~16x, took 96 s to build 1M (far more at 10M on two cores), and on
random codes needed M=32, ef=800 for 0.97, several times slower than flat. IVF builds in seconds, saves
as nothing but its centroids, and has one knob, nprobe, that can be calibrated to a recall at build time.
"""

from __future__ import annotations

import numpy as np

from bench.timing import timed
from corrhash.retrieval import search_backend
from corrhash.retrieval.hamming import import_faiss
from corrhash.retrieval.index import HammingIndex
from corrhash.retrieval.ivf import CALIBRATION_QUERIES, tie_aware_recall

BITS = 64
K = 100
QUERIES = 1000
REPEATS = 3
CENTRES = 4096
FLIP = 0.1
TARGET_SPEEDUP, TARGET_RECALL = 20.0, 0.95  # the target, stated for 10M codes
_CHUNK = 1_000_000  # codes generated per step: 64 float draws per code would be 5 GB at 10M at once


def random_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)


def clustered_codes(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """n codes, each a random one of `centres` (unpacked bits) with each bit flipped with probability FLIP."""
    parts = []
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        bits = centres[rng.integers(0, len(centres), m)] ^ (rng.random((m, BITS)) < FLIP)
        parts.append(np.packbits(bits, axis=1))
    return np.concatenate(parts)


def run_search_scale(sizes=(1_000_000, 10_000_000), seed: int = 0, kinds=("random", "clustered"),
                     queries: int = QUERIES, log=print) -> list[dict]:
    """One row per (codes kind, size, threads): flat and IVF queries/s, speed-up, tie-aware recall@100."""
    rows = []
    for kind in kinds:
        for n in sizes:
            rng = np.random.default_rng(seed)
            if kind == "random":
                database, query_codes = random_codes(rng, n), random_codes(rng, queries)
                calibration = random_codes(rng, CALIBRATION_QUERIES)
            else:
                centres = rng.integers(0, 2, size=(CENTRES, BITS), dtype=np.uint8)
                database, query_codes = clustered_codes(rng, centres, n), clustered_codes(rng, centres, queries)
                calibration = clustered_codes(rng, centres, CALIBRATION_QUERIES)
            rows += _measure(kind, database, query_codes, calibration, seed, log)
    return rows


def run_model_codes(folder, epochs: int = 3, seed: int = 0, queries: int = QUERIES, log=print) -> list[dict]:
    """The same measurement on codes a model made: CorrSH (64 bits) trained `epochs` epochs on a prepared corpus
    in this process; its train split's codes are the database, and a seeded sample of val documents gives the
    queries and, disjoint from them, the calibration set."""
    import torch

    from corrhash.data import TfidfShards
    from corrhash.models import ModelConfig
    from corrhash.train import Evaluator, TrainConfig
    from corrhash.train.loop import new_state, train_epochs

    shards = TfidfShards(folder)
    device = torch.device("cpu")
    config = TrainConfig(epochs=epochs, seed=seed, device="cpu")
    train, val = shards.split("train"), shards.split("val")
    state = new_state(ModelConfig(name="corrsh", bits=BITS), config, shards.n_features, device)
    evaluator = Evaluator(train, val.sample(queries + CALIBRATION_QUERIES, seed), device, K)
    for terms in train_epochs(state.model, state, evaluator.database_rows, config.batch_size, device, epochs):
        log(f"  search: model codes, epoch {terms['epoch']}/{epochs} on {len(train):,} documents, "
            f"loss {terms['loss']:.1f}")
    database, sample = evaluator.codes(state.model)
    order = np.random.default_rng(seed).permutation(len(sample))
    calibration, query_codes = sample[order[:CALIBRATION_QUERIES]], sample[order[CALIBRATION_QUERIES:]]
    return _measure(f"CorrSH model, {epochs} epoch{'s' if epochs != 1 else ''}", database, query_codes, calibration, seed, log)


def _measure(kind: str, database: np.ndarray, query_codes: np.ndarray, calibration: np.ndarray, seed: int,
             log=print) -> list[dict]:
    """Flat and calibrated IVF over `database`, searched with `query_codes` at one thread and at all of them."""
    faiss = import_faiss()
    all_threads = faiss.omp_get_max_threads()
    n, queries, rows = len(database), len(query_codes), []
    ids = np.arange(n)
    flat_build_s, flat = timed(lambda: HammingIndex(database, ids, BITS, kind="flat"))
    ivf_build_s, ivf = timed(lambda: HammingIndex(database, ids, BITS, kind="ivf", seed=seed,
                                                        calibration_queries=calibration))
    flat.search(query_codes[:1], K)  # builds the kept faiss index, outside the timings
    _, exact_distances = flat.search(query_codes, K)
    found, distances = ivf.search(query_codes, K)
    recall = tie_aware_recall(distances, found, exact_distances[:, -1])  # ids are positions here
    # How spread the codes are: collapsed codes (few distinct, the k-th neighbour at distance 0) make any index
    # look good, so the table shows it beside the recall.
    distinct = len(np.unique(database.view(np.dtype((np.void, database.shape[1])))))
    for threads in sorted({1, all_threads}):
        faiss.omp_set_num_threads(threads)
        try:
            flat_s = min(timed(lambda: flat.search(query_codes, K))[0] for _ in range(REPEATS))
            ivf_s = min(timed(lambda: ivf.search(query_codes, K))[0] for _ in range(REPEATS))
        finally:
            faiss.omp_set_num_threads(all_threads)
        info = ivf.search_info
        row = {"codes": kind, "n": n, "bits": BITS, "k": K, "queries": queries, "threads": threads,
               "flat_backend": search_backend(), "flat_qps": queries / flat_s,
               "ivf_qps": queries / ivf_s, "speedup": flat_s / ivf_s, "recall_at_k": recall,
               "recall_definition": info["recall"]["definition"], "nlist": info["nlist"],
               "nprobe": info["nprobe"], "calibrated_recall": info["recall"]["value"],
               "flat_build_s": flat_build_s, "ivf_build_s": ivf_build_s, "timing": f"best of {REPEATS}",
               "seed": seed, "distinct_codes": distinct, "median_kth_distance": float(np.median(exact_distances[:, -1]))}
        row["meets_target"] = row["speedup"] >= TARGET_SPEEDUP and recall >= TARGET_RECALL
        rows.append(row)
        log(f"  search {kind} {n:,} x {BITS} bits, {threads} thread(s): flat {row['flat_qps']:,.0f} q/s, "
            f"ivf {row['ivf_qps']:,.0f} q/s ({row['speedup']:.1f}x, nprobe {info['nprobe']}/"
            f"{info['nlist']}), recall@{K} {recall:.3f}")
    return rows


def markdown_lines(rows: list[dict]) -> list[str]:
    """The rows as a markdown table with what its columns mean."""
    if not rows:
        return []
    lines = [f"Flat = exact faiss IndexBinaryFlat ({rows[0]['flat_backend']} backend); IVF = faiss IndexBinaryIVF "
             f"with nprobe calibrated at build time to recall >= {TARGET_RECALL} on {CALIBRATION_QUERIES} other held-out "
             f"queries (its 'calibrated recall'). "
             f"{rows[0]['queries']} held-out queries, k={rows[0]['k']}, queries/s {rows[0]['timing']}. "
             f"Recall@{rows[0]['k']} of IVF against flat, {rows[0]['recall_definition']}. Target (10M codes): "
             f">= {TARGET_SPEEDUP:g}x flat at recall >= {TARGET_RECALL}.", "",
             "| codes | N | distinct codes | median 100th distance | threads | flat q/s | IVF q/s | speed-up | "
             "recall@100 | nprobe / nlist | calibrated recall | IVF build s | target met |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['codes']} | {r['n']:,} | {r.get('distinct_codes', 0):,} | "
                     f"{r.get('median_kth_distance', float('nan')):g} | {r['threads']} | {r['flat_qps']:,.0f} | {r['ivf_qps']:,.0f} | "
                     f"{r['speedup']:.1f}x | {r['recall_at_k']:.3f} | {r['nprobe']} / {r['nlist']} | "
                     f"{r['calibrated_recall']:.3f} | {r['ivf_build_s']:.1f} | {'yes' if r['meets_target'] else 'no'} |")
    return lines + [""]
