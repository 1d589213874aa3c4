"""Tests for corrhash.retrieval: packing, exact Hamming top-k, precision@k."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest
import torch

from corrhash.retrieval import (
    hamming_topk,
    label_matrix,
    pack_codes,
    pairs_at_distance,
    precision_at_k,
    unpack_codes,
)

BACKENDS = ["faiss", "torch"]


def random_codes(rng, n, n_bits):
    return pack_codes(rng.random((n, n_bits)) < 0.5)


def hamming_matrix(queries_packed, db_packed):
    """Reference: popcount of XOR for every pair, in plain numpy."""
    xor = queries_packed[:, None, :] ^ db_packed[None, :, :]
    return np.unpackbits(xor, axis=2).sum(axis=2)


def reference_topk(queries_packed, db_packed, k):
    dist = hamming_matrix(queries_packed, db_packed)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # ties -> lower index
    return np.take_along_axis(dist, order, axis=1), order


# ---------------------------------------------------------------- codes


@pytest.mark.parametrize("n_bits", [1, 7, 8, 13, 64, 100])
def test_pack_round_trip_matches_np_packbits(n_bits):
    bits = np.random.default_rng(n_bits).random((9, n_bits)) < 0.5
    packed = pack_codes(bits)
    assert packed.dtype == np.uint8 and packed.shape == (9, (n_bits + 7) // 8)
    np.testing.assert_array_equal(packed, np.packbits(bits, axis=1))
    np.testing.assert_array_equal(unpack_codes(packed, n_bits), bits)
    # 0/1 ints and torch tensors pack identically to bools.
    np.testing.assert_array_equal(pack_codes(bits.astype(np.int64)), packed)
    np.testing.assert_array_equal(pack_codes(torch.from_numpy(bits).float()), packed)


def test_pack_is_msb_first():
    bits = np.zeros((1, 16), dtype=bool)
    bits[0, 0] = bits[0, 15] = True
    np.testing.assert_array_equal(pack_codes(bits), [[0b10000000, 0b00000001]])


def test_unpack_reads_msb_first_and_drops_the_padding():
    packed = np.array([[0b10100000, 0b01000000], [0b00000001, 0b11000000]], dtype=np.uint8)
    expected = np.array([[1, 0, 1, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]], dtype=bool)
    unpacked = unpack_codes(packed, 10)
    assert unpacked.dtype == np.bool_ and unpacked.shape == (2, 10)
    np.testing.assert_array_equal(unpacked, expected)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(8, dtype=bool), np.zeros((2, 0), dtype=bool), np.array([[1, -1]]), np.array([[0.5, 1.0]]), np.array([["a", "b"]])],
)
def test_pack_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        pack_codes(bad)


def test_unpack_rejects_bad_input():
    packed = np.zeros((3, 2), dtype=np.uint8)
    with pytest.raises(ValueError):
        unpack_codes(packed, 17)  # needs 3 bytes
    with pytest.raises(ValueError):
        unpack_codes(packed, 8)  # needs 1 byte
    with pytest.raises(ValueError):
        unpack_codes(packed.astype(np.int32), 16)
    with pytest.raises(ValueError):
        unpack_codes(np.zeros(4, dtype=np.uint8), 8)


@pytest.mark.parametrize("n_bits", [16, 64, 72])
def test_faiss_accepts_layout(n_bits):
    rng = np.random.default_rng(n_bits)
    db, queries = random_codes(rng, 50, n_bits), random_codes(rng, 7, n_bits)
    index = faiss.IndexBinaryFlat(n_bits)
    index.add(db)
    distances, indices = index.search(queries, len(db))
    faiss_matrix = np.empty((len(queries), len(db)), dtype=np.int64)
    np.put_along_axis(faiss_matrix, indices, distances, axis=1)
    np.testing.assert_array_equal(faiss_matrix, hamming_matrix(queries, db))


# ---------------------------------------------------------------- hamming_topk


@pytest.mark.parametrize("n_bits", [4, 12, 16, 64, 128])
@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_matches_stable_reference(n_bits, backend):
    # 4 and 16 bits over 600 docs give large tie groups; chunks smaller than
    # the data exercise chunk merging; 12 bits exercises byte padding.
    rng = np.random.default_rng(n_bits)
    db, queries = random_codes(rng, 600, n_bits), random_codes(rng, 37, n_bits)
    k = 50
    distances, indices = hamming_topk(queries, db, k, backend=backend, chunk=8, db_chunk=70)
    ref_dist, ref_idx = reference_topk(queries, db, k)
    assert distances.dtype == np.int32 and indices.dtype == np.int64
    assert distances.shape == indices.shape == (37, k)
    np.testing.assert_array_equal(distances, ref_dist)
    np.testing.assert_array_equal(indices, ref_idx)


@pytest.mark.parametrize("n_bits", [16, 64, 128])
def test_backends_agree_exactly(n_bits):
    rng = np.random.default_rng(100 + n_bits)
    db = random_codes(rng, 3000, n_bits)
    db[1500:1600] = db[10]  # exact duplicates: ties at distance 0 across chunks
    queries = np.concatenate([random_codes(rng, 60, n_bits), db[[10, 2999]]])
    db.setflags(write=False)  # e.g. a memmap: must be accepted as-is
    results = [hamming_topk(queries, db, 100, backend=b, chunk=16, db_chunk=512) for b in BACKENDS]
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    # Query == db[10]: the duplicates come out in database order.
    np.testing.assert_array_equal(results[0][1][-2], [10, *range(1500, 1599)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_k_equals_database_size_and_bad_k(backend):
    rng = np.random.default_rng(0)
    db, queries = random_codes(rng, 20, 16), random_codes(rng, 3, 16)
    distances, indices = hamming_topk(queries, db, 20, backend=backend, chunk=2, db_chunk=7)
    ref_dist, ref_idx = reference_topk(queries, db, 20)
    np.testing.assert_array_equal(indices, ref_idx)
    np.testing.assert_array_equal(distances, ref_dist)
    for bad_k in (0, 21):
        with pytest.raises(ValueError):
            hamming_topk(queries, db, bad_k, backend=backend)
    with pytest.raises(ValueError):
        hamming_topk(queries, random_codes(rng, 20, 24), 5, backend=backend)  # width mismatch
    with pytest.raises(ValueError):
        hamming_topk(queries, db, 5, backend="gpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairs_at_distance_finds_all_and_only_exact_pairs(backend):
    rng = np.random.default_rng(1)
    db, queries = random_codes(rng, 300, 8), random_codes(rng, 11, 8)
    target = rng.integers(0, 9, size=11)
    pairs = list(pairs_at_distance(queries, db, target, backend=backend, chunk=4, db_chunk=64))
    found = sorted(zip(np.concatenate([p[0] for p in pairs]).tolist(), np.concatenate([p[1] for p in pairs]).tolist()))
    dist = hamming_matrix(queries, db)
    expected = sorted(zip(*np.nonzero(dist == target[:, None])))
    assert found == [(int(q), int(d)) for q, d in expected]


# ---------------------------------------------------------------- precision_at_k


def hand_case():
    """3 queries, 6 database docs, 8-bit codes, 5 labels, k=3.

    q0 = 00000000, labels {0, 3}. Distances = popcount of the db code:
        d0 11000000 {1}     dist 2  not relevant
        d1 10000000 {0, 2}  dist 1  relevant (shares 0)
        d2 00110000 {0}     dist 2  relevant
        d3 00001100 {0, 1}  dist 2  relevant
        d4 11100000 {0}     dist 3  relevant
        d5 00000011 {3}     dist 2  relevant (shares 3 only)
      ranking (dist, index): d1, d0, d2 | d3, d5, d4
      ordered   = [1, 0, 1] -> 2/3
      tie-aware : d_3 = 2; strictly closer: d1 (relevant) -> 1;
                  2 slots from the tie group {d0, d2, d3, d5} at distance 2,
                  3 of 4 relevant -> 1 + 2 * 3/4 = 2.5 -> 2.5/3 = 5/6.
    q1 = 11111111, labels {1}. Distances = 8 - popcount:
        d0 6 rel, d1 7, d2 6, d3 6 rel, d4 5, d5 6
      ranking: d4, d0, d2 | d3, d5, d1
      ordered   = [0, 1, 0] -> 1/3
      tie-aware : d_3 = 6; closer: d4 (not relevant) -> 0;
                  2 slots from {d0, d2, d3, d5}, 2 of 4 relevant -> 2 * 1/2 = 1 -> 1/3.
    q2 = 00001111, labels {4}: no document has label 4 -> 0 and 0.
    Means: ordered = (2/3 + 1/3 + 0) / 3 = 1/3; tie-aware = (5/6 + 1/3 + 0) / 3 = 7/18.
    """
    bits = lambda rows: pack_codes(np.array([[c == "1" for c in r] for r in rows]))
    db = bits(["11000000", "10000000", "00110000", "00001100", "11100000", "00000011"])
    queries = bits(["00000000", "11111111", "00001111"])
    db_labels = label_matrix([[1], [0, 2], [0], [0, 1], [0], [3]], 5)
    query_labels = label_matrix([[0, 3], [1], [4]], 5)
    return queries, query_labels, db, db_labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_precision_hand_computed(backend):
    result = precision_at_k(*hand_case(), k=3, backend=backend, chunk=2, db_chunk=4)
    assert result.k == 3
    np.testing.assert_allclose(result.ordered_per_query, [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(result.tie_aware_per_query, [5 / 6, 1 / 3, 0.0])
    assert result.ordered == pytest.approx(1 / 3)
    assert result.tie_aware == pytest.approx(7 / 18)


@pytest.mark.parametrize("backend", BACKENDS)
def test_precision_cut_without_spill(backend):
    # k=1 for q0: only d1 is at distance 1 -> no ambiguity, both numbers 1.
    # k=6 (whole database): both numbers are the relevant fraction of all docs.
    queries, query_labels, db, db_labels = hand_case()
    one = precision_at_k(queries[:1], query_labels[:1], db, db_labels, k=1, backend=backend)
    assert (one.ordered, one.tie_aware) == (1.0, 1.0)
    everything = precision_at_k(queries[:1], query_labels[:1], db, db_labels, k=6, backend=backend)
    assert everything.ordered == pytest.approx(5 / 6) and everything.tie_aware == pytest.approx(5 / 6)


def test_precision_rejects_bad_labels():
    queries, query_labels, db, db_labels = hand_case()
    with pytest.raises(ValueError):
        precision_at_k(queries, query_labels[:, :4], db, db_labels, k=3)  # label counts differ
    with pytest.raises(ValueError):
        precision_at_k(queries, query_labels[:2], db, db_labels, k=3)  # rows != codes
    with pytest.raises(ValueError):
        precision_at_k(queries, query_labels * 2, db, db_labels, k=3)  # not 0/1
    with pytest.raises(ValueError):
        label_matrix([[5]], 5)


def reference_precision(queries, query_labels, db, db_labels, k):
    """Brute force: full distance and relevance matrices, stable argsort."""
    dist = hamming_matrix(queries, db)
    relevant = (query_labels.astype(np.int64) @ db_labels.T.astype(np.int64)) > 0
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ordered = np.take_along_axis(relevant, order, axis=1).mean(axis=1)
    tie_aware = []
    for q in range(len(queries)):
        cut = dist[q, order[q, -1]]
        closer, tied = dist[q] < cut, dist[q] == cut
        slots = k - closer.sum()
        tie_aware.append((relevant[q, closer].sum() + slots * relevant[q, tied].mean()) / k)
    return ordered, np.array(tie_aware)


def enumerated_tie_aware(queries, query_labels, db, db_labels, k):
    """Tie-aware precision by averaging over every way to fill the slots from
    the tie group (the definition, not the closed form)."""
    dist = hamming_matrix(queries, db)
    relevant = (query_labels.astype(np.int64) @ db_labels.T.astype(np.int64)) > 0
    values = []
    for q in range(len(queries)):
        cut = np.sort(dist[q])[k - 1]
        closer = np.flatnonzero(dist[q] < cut)
        tied = np.flatnonzero(dist[q] == cut)
        picks = [relevant[q, closer].sum() + relevant[q, list(c)].sum() for c in itertools.combinations(tied, k - len(closer))]
        values.append(np.mean(picks) / k)
    return np.array(values)


def random_labelled(rng, n, n_bits, n_labels, density):
    return random_codes(rng, n, n_bits), rng.random((n, n_labels)) < density


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_aware_matches_enumeration(backend):
    rng = np.random.default_rng(7)
    queries, query_labels = random_labelled(rng, 6, 5, 4, 0.3)
    db, db_labels = random_labelled(rng, 24, 5, 4, 0.3)
    result = precision_at_k(queries, query_labels, db, db_labels, k=4, backend=backend, chunk=4, db_chunk=10)
    np.testing.assert_allclose(result.tie_aware_per_query, enumerated_tie_aware(queries, query_labels, db, db_labels, 4))


@pytest.mark.parametrize("n_bits", [8, 16, 64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_precision_matches_brute_force(n_bits, backend):
    rng = np.random.default_rng(n_bits)
    queries, query_labels = random_labelled(rng, 40, n_bits, 70, 0.03)  # 70 labels: 2 bitset words
    db, db_labels = random_labelled(rng, 900, n_bits, 70, 0.03)
    ordered, tie_aware = reference_precision(queries, query_labels, db, db_labels, 25)
    assert (ordered != tie_aware).any()  # the data really has ties that spill over the cut
    result = precision_at_k(queries, query_labels, db, db_labels, k=25, backend=backend, chunk=16, db_chunk=200)
    np.testing.assert_allclose(result.ordered_per_query, ordered)
    np.testing.assert_allclose(result.tie_aware_per_query, tie_aware)
    assert result.ordered == pytest.approx(ordered.mean())
    assert result.tie_aware == pytest.approx(tie_aware.mean())
