"""The document graph (models/graph.py) against brute force, its cache beside the shards and the neighbour pairs
the epoch loop trains on (train/neighbours.py)."""

from __future__ import annotations

import builtins
import os
import shutil
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from corrhash.data import TfidfShards
from corrhash.data.device_csr import DeviceCSR
from corrhash.errors import ConfigError, DataError
from corrhash.models.graph import (exact_neighbours, heaviest_terms, knn_graph, nndescent_neighbours,
                                   pruned_neighbours, resolved_method, search_quality, symmetric_graph,
                                   torch_exact_neighbours, EXACT_MAX_DOCS)
from corrhash.train.neighbours import (LIST_WIDTH, NeighbourPairs, NeighbourSource, cached_graph, cached_lists,
                                       graph_path, neighbour_source)
from corrhash.models import ModelConfig

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def brute_force(dense: np.ndarray, k: int) -> tuple[np.ndarray, list[set[int]]]:
    """(cosine matrix, each row's set of k most similar others with cosine > 0), by the definition."""
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    unit = np.divide(dense, norms, out=np.zeros_like(dense), where=norms > 0)
    sims = unit @ unit.T
    nearest = []
    for i in range(len(sims)):
        others = [j for j in np.argsort(-sims[i], kind="stable") if j != i][:k]
        nearest.append({j for j in others if sims[i, j] > 0})
    return sims, nearest


def random_docs(seed: int, n: int = 23, features: int = 15) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.uniform(0, 1, (n, features)) * (rng.uniform(0, 1, (n, features)) < 0.3)
    dense[5] = 0  # an empty document: no neighbours at all
    return dense


@pytest.mark.parametrize("kind", ["knn", "mutual"])
def test_exact_graph_matches_brute_force(kind):
    dense, k = random_docs(3), 4
    sims, nearest = brute_force(dense, k)
    expected = np.zeros_like(sims)
    for i, js in enumerate(nearest):
        for j in js:
            if kind == "knn" or i in nearest[j]:
                expected[i, j] = expected[j, i] = sims[i, j]
    for chunk_rows in (1, 7, 100):
        graph = symmetric_graph(*exact_neighbours(sp.csr_matrix(dense, dtype=np.float32), k, chunk_rows), kind)
        np.testing.assert_allclose(graph.toarray(), expected, atol=1e-12)
    assert graph.toarray()[5].sum() == 0 and np.diag(graph.toarray()).sum() == 0
    if kind == "mutual":
        assert 0 < graph.nnz < knn_graph(sp.csr_matrix(dense), k).nnz  # this corpus has one-sided pairs


def test_k_beyond_the_corpus_lists_every_other_document():
    dense = random_docs(4, n=6)
    ids, sims = exact_neighbours(sp.csr_matrix(dense), k=50)
    _, nearest = brute_force(dense, k=5)
    assert [set(row[row >= 0]) for row in ids] == nearest


def test_lists_are_sorted_most_similar_first_with_true_cosines():
    dense = random_docs(5, n=40, features=20)
    sims_true, _ = brute_force(dense, 5)
    ids, sims = exact_neighbours(sp.csr_matrix(dense), k=6)
    assert (np.diff(sims, axis=1) <= 0).all()
    rows, slots = np.nonzero(ids >= 0)
    np.testing.assert_allclose(sims[rows, slots], sims_true[rows, ids[rows, slots]], atol=1e-12)


def test_search_quality_counts_ties_at_the_kth_cosine_as_found():
    exact = np.array([[0.9, 0.5, 0.5], [0.8, 0.3, 0.0]])  # row 1 has only two neighbours with cosine > 0
    # row 0: finds 0.9 and another document tied at 0.5 (a right answer), misses one: 2 of 3;
    # row 1: finds both, plus a third at 0.3 (counted at most as many as it has): 2 of 2
    found = np.array([[0.9, 0.5, 0.2], [0.8, 0.3, 0.3]])
    quality = search_quality(found, exact)
    assert quality["recall"] == pytest.approx(4 / 5)
    assert quality["mean_cosine_found"] == pytest.approx(found.mean())
    assert quality["mean_cosine_exact"] == pytest.approx(exact.mean())
    assert search_quality(exact, exact)["recall"] == 1.0
    assert search_quality(np.zeros((2, 3)), exact)["recall"] == 0.0


def test_heaviest_terms_keep_each_rows_largest_entries():
    x = sp.csr_matrix(np.array([[0.1, 0.5, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0], [0.7, 0.0, 0.0, 0.2]]))
    np.testing.assert_array_equal(heaviest_terms(x, 2).toarray(),
                                  [[0.0, 0.5, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0], [0.7, 0.0, 0.0, 0.2]])


def test_pruned_search_against_brute_force(shards_synthetic):
    train = TfidfShards(shards_synthetic).split("train")
    k = 10
    _, exact = exact_neighbours(train.features, k)
    ids, sims, choice = pruned_neighbours(train.features, k)
    measured = search_quality(sims, exact)
    print(f"pruned search recall@{k} on {len(train)} synthetic train documents: {measured['recall']:.4f} "
          f"({choice.index_terms} terms, {choice.candidates} candidates; sampled {choice.recall:.4f})")
    assert measured["recall"] >= 0.95 and choice.recall >= 0.95
    # what it lists is right: true cosines, sorted, nobody their own neighbour, no document twice
    unit = sp.diags(1 / np.sqrt(train.features.multiply(train.features).sum(axis=1)).A.ravel()) @ train.features
    rows, slots = np.nonzero(ids >= 0)
    true = np.asarray(unit[rows].multiply(unit[ids[rows, slots]]).sum(axis=1)).ravel()
    np.testing.assert_allclose(sims[rows, slots], true, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 0).all() and not (ids == np.arange(len(train))[:, None]).any()
    assert all(len(set(row[row >= 0])) == (row >= 0).sum() for row in ids)


def test_pruned_search_with_a_tiny_index_measures_its_own_low_recall(shards_synthetic):
    train = TfidfShards(shards_synthetic).split("train")
    _, exact = exact_neighbours(train.features, 10)
    ids, sims, choice = pruned_neighbours(train.features, 10, index_terms=1, candidates=10)
    assert choice.tried == [(1, 10, choice.recall)]
    assert abs(choice.recall - search_quality(sims, exact)["recall"]) < 0.1  # the sample tells the truth
    assert choice.recall < 0.95


def test_auto_method_switches_to_pruned_above_the_exact_limit():
    assert resolved_method("auto", EXACT_MAX_DOCS) == "exact"
    assert resolved_method("auto", EXACT_MAX_DOCS + 1) == "pruned"
    assert resolved_method("exact", 10**7) == "exact"
    with pytest.raises(ConfigError, match="unknown graph search 'faiss'.*auto, exact, pruned, nndescent"):
        resolved_method("faiss", 10)


def test_nndescent_without_its_extra_is_a_named_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynndescent", None)  # what an install without the extra gives: ImportError
    with pytest.raises(ConfigError, match=r"pip install 'corrhash\[nndescent\]'"):
        nndescent_neighbours(sp.csr_matrix(random_docs(1)), 3)


# ---- the cache -----------------------------------------------------------------------------------------------


@pytest.fixture
def shards_copy(shards_synthetic, tmp_path):
    return TfidfShards(shutil.copytree(shards_synthetic, tmp_path / "shards", ignore=shutil.ignore_patterns("graphs")))


def test_one_search_serves_every_k_and_kind_up_to_its_width(shards_copy, capsys):
    graph, info = cached_graph(shards_copy, 7, "knn")
    assert info.built and info.path.parent == shards_copy.root / "graphs" and info.path.is_file()
    assert info.path == graph_path(shards_copy, LIST_WIDTH, "exact")
    features = shards_copy.split("train").features
    np.testing.assert_allclose(graph.toarray(), knn_graph(features, 7).toarray(), rtol=1e-6)  # stored as float32
    for k, kind in [(7, "knn"), (5, "mutual"), (LIST_WIDTH, "knn")]:
        again, reused = cached_graph(shards_copy, k, kind)
        assert not reused.built and reused.path == info.path
        np.testing.assert_allclose(again.toarray(), knn_graph(features, k, kind).toarray(), rtol=1e-6)
    assert "document graph: reused" in capsys.readouterr().err
    # a wider k searches once more, and that file then serves the narrower ones too
    _, wider = cached_graph(shards_copy, LIST_WIDTH + 5, "knn")
    assert wider.built and wider.path == graph_path(shards_copy, LIST_WIDTH + 5, "exact")
    info.path.unlink()
    _, served = cached_graph(shards_copy, 7, "knn")
    assert not served.built and served.path == wider.path
    assert not list(info.path.parent.glob(".*tmp*"))  # nothing half-written left behind


def test_sth_and_a_nbr_model_share_one_search(shards_copy):
    sth = neighbour_source(shards_copy, ModelConfig(name="sth", bits=8, neighbours=10))
    nbr = neighbour_source(shards_copy, ModelConfig(name="nash-nbr", bits=8, neighbours=20, graph="mutual"))
    files = list((shards_copy.root / "graphs").glob("*.npz"))
    assert len(files) == 1 and sth is not None and nbr is not None
    assert neighbour_source(shards_copy, ModelConfig(name="nash", bits=8)) is None
    features = shards_copy.split("train").features
    np.testing.assert_allclose(sth.graph.toarray(), knn_graph(features, 10).toarray(), rtol=1e-6)
    np.testing.assert_allclose(nbr.graph.toarray(), knn_graph(features, 20, "mutual").toarray(), rtol=1e-6)


def test_unwritable_shards_cache_in_the_user_cache(shards_copy, tmp_path, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root can write a read-only folder")
    monkeypatch.setenv("CORRHASH_CACHE", str(tmp_path / "cache"))
    os.chmod(shards_copy.root, 0o555)
    try:
        _, info = cached_graph(shards_copy, 5, "knn")
    finally:
        os.chmod(shards_copy.root, 0o755)
    assert info.path.parent == tmp_path / "cache" / "graphs"


def test_a_cached_graph_of_another_size_is_a_named_error(shards_copy):
    path = graph_path(shards_copy, LIST_WIDTH, "exact")
    path.parent.mkdir(exist_ok=True)
    np.savez(path, ids=np.zeros((3, LIST_WIDTH), dtype=np.int32), sims=np.zeros((3, LIST_WIDTH), dtype=np.float32),
             meta=np.frombuffer(b"{}", dtype=np.uint8))
    with pytest.raises(DataError, match=f"{path.name}.*3 rows.*delete it"):
        cached_graph(shards_copy, 5, "knn")
    path.write_bytes(b"not an npz")
    with pytest.raises(DataError, match="cannot read the cached document graph"):
        cached_graph(shards_copy, 5, "knn")


# ---- neighbour pairs -----------------------------------------------------------------------------------------


def test_each_document_is_paired_with_one_of_its_neighbours_uniformly():
    graph = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=float))
    features = sp.csr_matrix(np.eye(4, 6, dtype=np.float32) + np.eye(4, 6, k=2, dtype=np.float32))
    pairs = NeighbourPairs(DeviceCSR(features, torch.device("cpu")), NeighbourSource(graph))
    generator = torch.Generator().manual_seed(0)
    drawn = torch.stack([pairs.sample(torch.arange(4), generator)[0] for _ in range(2000)])
    assert set(drawn[:, 1].tolist()) == {0} and set(drawn[:, 2].tolist()) == {0}
    assert set(drawn[:, 0].tolist()) == {1, 2} and abs((drawn[:, 0] == 1).float().mean() - 0.5) < 0.05
    x, neighbours = next(pairs.batches(torch.Generator().manual_seed(1), batch_size=4))
    assert x.shape == neighbours.shape == (4, 6)
    rows = x.to_dense().numpy()
    for row, neighbour in zip(rows, neighbours.to_dense().numpy()):
        i = int(np.flatnonzero(row)[0])
        if i == 3:  # isolated: an empty neighbour row, so no pairwise term
            assert not neighbour.any()
        else:
            j = int(np.flatnonzero(neighbour)[0])
            assert graph[i, j] > 0


def test_a_share_is_paired_with_neighbours_from_the_whole_split(shards_copy):
    paths = shards_copy.shard_paths("train")
    assert len(paths) >= 2
    share_paths = paths[1::2]
    source = neighbour_source(shards_copy, ModelConfig(name="nash-nbr", neighbours=5), share_paths=share_paths)
    share = shards_copy.split("train", share_paths)
    whole = shards_copy.split("train")
    assert np.array_equal(whole.doc_ids[source.share_rows], share.doc_ids)
    pairs = NeighbourPairs(DeviceCSR(share.features, torch.device("cpu")), source)
    nodes, has, _ = pairs.sample(torch.arange(len(share)), torch.Generator().manual_seed(0))
    dense = source.graph.toarray()
    assert (dense[source.share_rows[has.numpy()], nodes[has].numpy()] > 0).all() and has.float().mean() > 0.9


def test_torch_block_product_gives_the_exact_lists(shards_synthetic):
    features = TfidfShards(shards_synthetic).split("train").features
    ids, sims = exact_neighbours(features, 10)
    found_ids, found = torch_exact_neighbours(features, 10, device="cpu", rows_per_block=37)
    np.testing.assert_allclose(found, sims, atol=1e-5)  # float32 cosines
    assert search_quality(found, sims)["recall"] == 1.0
    assert (found_ids == ids).mean() > 0.99  # only float32 near-ties may swap
