"""The document graph (models/graph.py) against brute force, its cache beside the shards and the neighbour pairs
the epoch loop trains on (train/neighbours.py)."""

from __future__ import annotations

import builtins
import os
import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from corrhash.data import TfidfShards
from corrhash.data.device_csr import DeviceCSR
from corrhash.errors import DataError
from corrhash.models.graph import (approximate_neighbours, exact_neighbours, knn_graph, recall, resolved_method,
                                   symmetric_graph, EXACT_MAX_DOCS)
from corrhash.train.neighbours import NeighbourPairs, NeighbourSource, cached_graph, graph_path, neighbour_source
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


def test_recall_is_the_share_of_true_neighbours_found():
    exact = np.array([[1, 2, -1], [0, 2, 3]])
    found = np.array([[2, 3, 4], [3, 0, -1]])
    assert recall(found, exact) == pytest.approx(3 / 5)  # row 0 finds 2 of {1, 2}; row 1 finds 0, 3 of {0, 2, 3}
    assert recall(exact, exact) == 1.0


def test_auto_method_switches_to_approximate_above_the_exact_limit():
    assert resolved_method("auto", EXACT_MAX_DOCS) == "exact"
    assert resolved_method("auto", EXACT_MAX_DOCS + 1) == "approximate"
    assert resolved_method("exact", 10**7) == "exact"


@pytest.mark.slow  # pynndescent compiles its numba kernels on first use (tens of seconds)
def test_approximate_graph_recalls_the_exact_neighbours(shards_synthetic, monkeypatch):
    # Ray replaces print in its workers and in a driver that showed a Ray Data bar: the search must work there too
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    train = TfidfShards(shards_synthetic).split("train")
    k = 10
    exact, _ = exact_neighbours(train.features, k)
    found, sims = approximate_neighbours(train.features, k, seed=0)
    measured = recall(found, exact)
    monkeypatch.undo()
    print(f"NN-descent recall@{k} on {len(train)} synthetic train documents: {measured:.4f}")
    assert measured >= 0.95
    # what it does report is right: the listed cosines are the true ones, and nobody is their own neighbour
    unit = sp.diags(1 / np.sqrt(train.features.multiply(train.features).sum(axis=1)).A.ravel()) @ train.features
    rows, slots = np.nonzero(found >= 0)
    true = np.asarray(unit[rows].multiply(unit[found[rows, slots]]).sum(axis=1)).ravel()
    np.testing.assert_allclose(sims[rows, slots], true, atol=1e-5)
    assert not (found == np.arange(len(train))[:, None]).any()


# ---- the cache -----------------------------------------------------------------------------------------------


@pytest.fixture
def shards_copy(shards_synthetic, tmp_path):
    return TfidfShards(shutil.copytree(shards_synthetic, tmp_path / "shards", ignore=shutil.ignore_patterns("graphs")))


def test_graph_is_built_once_then_read_from_beside_the_shards(shards_copy, capsys):
    graph, info = cached_graph(shards_copy, 7, "knn")
    assert info.built and info.path.parent == shards_copy.root / "graphs" and info.path.is_file()
    again, reused = cached_graph(shards_copy, 7, "knn")
    assert not reused.built and reused.path == info.path
    assert (again != graph).nnz == 0
    expected = knn_graph(shards_copy.split("train").features, 7)
    np.testing.assert_allclose(again.toarray(), expected.toarray(), rtol=1e-6)  # stored as float32
    assert "document graph: reused" in capsys.readouterr().err
    # another k or kind is another file
    _, other = cached_graph(shards_copy, 7, "mutual")
    assert other.built and other.path != info.path
    assert not list(info.path.parent.glob(".*tmp*"))  # nothing half-written left behind


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
    path = graph_path(shards_copy, 5, "knn", "exact")
    path.parent.mkdir(exist_ok=True)
    np.savez(path, indptr=np.zeros(4, dtype=np.int64), indices=np.zeros(0, dtype=np.int64),
             data=np.zeros(0, dtype=np.float32), shape=np.array([3, 3]), meta=np.frombuffer(b"{}", dtype=np.uint8))
    with pytest.raises(DataError, match=f"{path.name}.*3 x 3.*delete it"):
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
    nodes, has = pairs.sample(torch.arange(len(share)), torch.Generator().manual_seed(0))
    dense = source.graph.toarray()
    assert (dense[source.share_rows[has.numpy()], nodes[has].numpy()] > 0).all() and has.float().mean() > 0.9
