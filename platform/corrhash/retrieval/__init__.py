"""Hamming retrieval over packed binary codes: packing, exact top-k search, precision@k; the saved index
(HammingIndex, flat or IVF) is corrhash.retrieval.index and its IVF corrhash.retrieval.ivf, imported by their
users."""

from corrhash.retrieval.codes import pack_codes, packed_width, unpack_codes
from corrhash.retrieval.hamming import hamming_topk, pairs_at_distance, resolve_backend, search_backend
from corrhash.retrieval.metrics import PrecisionAtK, label_matrix, precision_at_k

__all__ = [
    "PrecisionAtK",
    "hamming_topk",
    "label_matrix",
    "pack_codes",
    "packed_width",
    "pairs_at_distance",
    "precision_at_k",
    "resolve_backend",
    "search_backend",
    "unpack_codes",
]
