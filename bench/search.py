"""Hamming top-k throughput over random codes: our search backends against the authors' XOR-and-sort.

Throughput is in code pairs per second (queries × database codes / s), which is what scales: the
XOR loop is too slow for millions of codes, so it runs on a prefix of the database (and fewer
queries) and its pairs/s is the baseline each backend is divided by.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.reference import reference_topk
from bench.timing import timed
from corrhash.retrieval import hamming_topk

K = 100


def random_packed_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """n random codes packed as np.packbits rows (random bytes are random bits)."""
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def search_throughput(db_sizes: list[int], bit_lengths: list[int], queries: int, backends: list[str],
                      reference_queries: int, reference_db: int, device: torch.device, seed: int,
                      log=print) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for bits in bit_lengths:
        for n in db_sizes:
            database, query_codes = random_packed_codes(rng, n, bits), random_packed_codes(rng, queries, bits)
            row = {"bits": bits, "database": n, "queries": queries, "k": K}
            for backend in backends:
                hamming_topk(query_codes[:8], database[: max(K, 4096)], K, backend=backend)  # warm-up
                seconds, _ = timed(lambda: hamming_topk(query_codes, database, K, backend=backend))
                row[f"{backend}_s"] = seconds
                row[f"{backend}_pairs_per_s"] = queries * n / seconds
            reference_n = min(n, reference_db)
            db_bits = torch.from_numpy(np.unpackbits(database[:reference_n], axis=1)).to(device)
            query_bits = torch.from_numpy(np.unpackbits(query_codes[:reference_queries], axis=1)).to(device)
            reference_topk(query_bits[:8], db_bits[: 10 * K], K)  # warm-up
            seconds, _ = timed(lambda: reference_topk(query_bits, db_bits, K))
            row.update(reference_queries=len(query_bits), reference_database=reference_n, reference_s=seconds,
                       reference_pairs_per_s=len(query_bits) * reference_n / seconds)
            for backend in backends:
                row[f"{backend}_vs_reference"] = row[f"{backend}_pairs_per_s"] / row["reference_pairs_per_s"]
            rows.append(row)
            log(f"  search {bits} bits x {n:,}: " + ", ".join(f"{b} {row[f'{b}_pairs_per_s']:.2e} pairs/s"
                                                             for b in backends))
            del database, db_bits
    return rows
