"""HammingIndex's sub-linear kind (binary IVF): exact answers where the answer is known by construction,
the calibrated recall and parameters kept through save and load, sidecars the files cannot satisfy refused."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import corrhash.retrieval.index as index_module
from corrhash.errors import DataError
from corrhash.retrieval import hamming_topk
from corrhash.retrieval.index import HammingIndex
from corrhash.retrieval.ivf import tie_aware_recall

BITS = 64
PLANTED = 4  # near-duplicates of each query, at Hamming distances 0, 1, 2, 3


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)


def planted_world(n_background=6000, n_queries=40, seed=0):
    """Random background codes all far (> 8 bits) from every query, plus each query flipped in 0, 1, 2
    and 3 distinct bits: a query's top-4 is its own near-duplicates, nearest first, by construction."""
    rng = np.random.default_rng(seed)
    queries = rng.integers(0, 256, (n_queries, BITS // 8), dtype=np.uint8)
    background = rng.integers(0, 256, (n_background, BITS // 8), dtype=np.uint8)
    background = background[hamming(queries, background).min(axis=0) > 8]
    planted = []
    for query in np.unpackbits(queries, axis=1):
        flip_order = rng.permutation(BITS)
        for distance in range(PLANTED):
            copy = query.copy()
            copy[flip_order[:distance]] ^= 1
            planted.append(np.packbits(copy))
    codes = np.concatenate([background, np.array(planted)])
    ids = np.arange(len(codes))
    order = rng.permutation(len(codes))  # planted codes scattered through the index, not at its end
    return queries, codes[order], ids[order], len(background)


def clustered_codes(n, centres=64, flip=0.05, seed=0):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (centres, BITS), dtype=np.uint8)[rng.integers(0, centres, n)]
    return np.packbits(bits ^ (rng.random((n, BITS)) < flip), axis=1)


@pytest.fixture(scope="module")
def planted():
    queries, codes, ids, n_background = planted_world()
    return queries, codes, ids, n_background, HammingIndex(codes, ids, BITS, {"model": "m"}, kind="ivf")


def test_ivf_returns_the_planted_top_k_exactly(planted):
    queries, codes, ids, n_background, index = planted
    assert index.kind == "ivf" and index.search_info["nprobe"] < index.search_info["nlist"]
    found, distances = index.search(queries, PLANTED)
    np.testing.assert_array_equal(distances, np.tile(np.arange(PLANTED), (len(queries), 1)))
    # planted ids were n_background + 4*query + distance before the shuffle
    expected = n_background + PLANTED * np.arange(len(queries))[:, None] + np.arange(PLANTED)
    np.testing.assert_array_equal(found, expected)


def test_ivf_records_its_calibrated_recall(planted):
    info = planted[-1].search_info
    assert info["kind"] == "ivf" and 1 <= info["nprobe"] <= info["nlist"]
    recall = info["recall"]
    assert recall["value"] >= recall["target"] == 0.95 and recall["k"] == 100 and "tie-aware" in recall["definition"]


def test_save_load_keeps_kind_parameters_recall_and_answers(planted, tmp_path):
    queries, _, _, _, index = planted
    path = index.save(tmp_path / "idx.npz")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["search"] == index.search_info and sidecar["model"] == "m"
    again = HammingIndex.load(path)
    assert again.kind == "ivf" and again.search_info == index.search_info and again.meta == {"model": "m"}
    for got, want in zip(again.search(queries, 50), index.search(queries, 50)):  # the same lists rebuilt
        np.testing.assert_array_equal(got, want)
    again.save(path)
    assert json.loads(path.with_suffix(".json").read_text()) == sidecar


def test_a_pickled_index_leaves_faiss_behind_and_rebuilds_it(planted):
    queries, _, _, _, index = planted
    index.search(queries[:1], 1)
    copy = pickle.loads(pickle.dumps(index))
    assert copy._faiss is None
    for got, want in zip(copy.search(queries, 10), index.search(queries, 10)):
        np.testing.assert_array_equal(got, want)


def test_flat_is_exact_and_its_sidecar_unchanged(tmp_path):
    codes = clustered_codes(3000)
    index = HammingIndex(codes, np.arange(3000), BITS)  # auto, small: flat
    assert index.kind == "flat" and index.search_info == {}
    distances, positions = hamming_topk(codes[:50], codes, 20, backend="faiss")
    found, found_distances = index.search(codes[:50], 20)
    np.testing.assert_array_equal(found, positions)
    np.testing.assert_array_equal(found_distances, distances)
    path = index.save(tmp_path / "flat.npz")
    assert json.loads(path.with_suffix(".json").read_text()) == {"bits": BITS, "size": 3000}


def test_auto_keeps_ivf_on_clustered_codes_and_rejects_it_on_random_ones(monkeypatch, tmp_path):
    monkeypatch.setattr(index_module, "AUTO_IVF_FROM", 1000)
    clustered = HammingIndex(clustered_codes(20000), np.arange(20000), BITS)
    assert clustered.kind == "ivf"
    random = np.random.default_rng(1).integers(0, 256, (20000, BITS // 8), dtype=np.uint8)
    flat = HammingIndex(random, np.arange(20000), BITS)
    assert flat.kind == "flat" and flat.search_info["kind"] == "flat"
    rejected = flat.search_info["ivf_rejected"]
    assert rejected["nprobe"] > index_module.AUTO_MAX_PROBED * rejected["nlist"]
    again = HammingIndex.load(flat.save(tmp_path / "rejected.npz"))  # the measurement that chose flat is kept
    assert again.kind == "flat" and again.search_info == flat.search_info


def test_tie_aware_recall_counts_ties_at_the_kth_distance_and_not_missing_hits():
    distances = np.array([[0, 2, 2], [1, 3, 9]])
    positions = np.array([[5, 7, 8], [1, 2, -1]])
    # query 0: exact k-th distance 2, all three within it; query 1: k-th 3, the third hit is missing
    assert tie_aware_recall(distances, positions, np.array([2, 3])) == pytest.approx((3 + 2) / 6)


def rewrite_sidecar(path, **changes):
    sidecar = path.with_suffix(".json")
    data = json.loads(sidecar.read_text())
    data["search"] = {**data["search"], **changes}
    sidecar.write_text(json.dumps(data))
    return sidecar


def test_a_sidecar_claiming_ivf_without_centroids_names_the_file(planted, tmp_path):
    flat = HammingIndex(planted[1], planted[2], BITS, kind="flat")
    path = flat.save(tmp_path / "idx.npz")
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "search": planted[-1].search_info}))
    with pytest.raises(DataError, match=f"{path}.*ivf_centroids"):
        HammingIndex.load(path)


@pytest.mark.parametrize("changes, message", [
    ({"kind": "hnsw"}, "kind"),
    ({"nprobe": 10**6}, "nprobe"),
    ({"nlist": "many"}, "nlist"),
])
def test_a_sidecar_with_impossible_search_parameters_names_the_file(planted, tmp_path, changes, message):
    path = planted[-1].save(tmp_path / "idx.npz")
    sidecar = rewrite_sidecar(path, **changes)
    with pytest.raises(DataError, match=message) as caught:
        HammingIndex.load(path)
    assert str(sidecar) in str(caught.value)


def test_centroids_that_do_not_match_the_sidecar_name_the_index_file(planted, tmp_path):
    index = planted[-1]
    path = index.save(tmp_path / "idx.npz")
    rewrite_sidecar(path, nlist=index.search_info["nlist"] + 1)
    with pytest.raises(DataError, match=f"{path}.*ivf_centroids must be uint8 of shape"):
        HammingIndex.load(path)


def test_unknown_kind_and_reserved_meta_are_refused(planted):
    with pytest.raises(ValueError, match="kind"):
        HammingIndex(planted[1], planted[2], BITS, kind="hnsw")
    with pytest.raises(DataError, match="search"):
        HammingIndex(planted[1], planted[2], BITS, {"search": 1})


def test_calibration_queries_given_at_build_time_are_the_ones_recorded(planted):
    queries, codes, ids, _, _ = planted
    index = HammingIndex(codes, ids, BITS, kind="ivf", calibration_queries=queries)
    recall = index.search_info["recall"]
    assert recall["sample"] == "queries given at build time" and recall["queries"] == len(queries)
    assert recall["value"] >= 0.95
    with pytest.raises(ValueError, match="calibration_queries"):
        HammingIndex(codes, ids, BITS, kind="ivf", calibration_queries=queries[:, :4])
