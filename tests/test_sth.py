"""Self-Taught Hashing: Laplacian eigenmap, per-bit classifiers (tiny synthetic data; its kNN graph: test_graph.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

import corrhash.models.sth  # noqa: F401  (registers "sth")
from corrhash.models import ModelConfig, create_model
from corrhash.models.sth import laplacian_eigenmap, median_bits

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def to_torch(m: sp.csr_matrix) -> torch.Tensor:
    m = sp.csr_matrix(m, dtype=np.float32)
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr).long(), torch.from_numpy(m.indices).long(),
                                   torch.from_numpy(m.data), m.shape, check_invariants=True)


def cluster_docs(n_docs: int, vocab: range, n_features: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Documents of 8 distinct words each, drawn from `vocab`, L2-normalised TF-IDF-like rows."""
    dense = np.zeros((n_docs, n_features), dtype=np.float32)
    for row in dense:
        words = rng.choice(np.array(vocab), size=8, replace=False)
        row[words] = rng.uniform(0.1, 1.0, size=8)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return sp.csr_matrix(dense)


def two_clusters(n_per: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = cluster_docs(n_per, range(0, 30), 60, rng)
    b = cluster_docs(n_per, range(30, 60), 60, rng)
    return sp.vstack([a, b]).tocsr(), np.repeat([True, False], n_per)


@pytest.mark.parametrize("n_per", [20, 150])  # dense eigh and ARPACK (2 * 150 > DENSE_MAX nodes)
def test_disjoint_clusters_split_on_first_bit(n_per):
    train, in_a = two_clusters(n_per, seed=0)
    unseen, unseen_in_a = two_clusters(10, seed=1)
    model = create_model(ModelConfig(name="sth", bits=4, neighbours=5), 60)
    train_bits = model.train_codes(train)[:, 0]
    assert train_bits[in_a].all() != train_bits[~in_a].any()  # one value on A, the other on B
    assert len(set(train_bits[in_a])) == 1 and len(set(train_bits[~in_a])) == 1
    model.fit_closed_form(train)
    for x, a in ((train, in_a), (unseen, unseen_in_a)):
        first = model.encode(to_torch(x))[:, 0].numpy()
        assert (first[a] == train_bits[in_a][0]).all() and (first[~a] == train_bits[~in_a][0]).all()


def hand_graph() -> sp.csr_matrix:
    """A connected weighted 7-node graph with distinct Laplacian eigenvalues."""
    edges = {(0, 1): 0.9, (0, 2): 0.4, (1, 2): 0.7, (2, 3): 0.2, (3, 4): 0.8, (4, 5): 0.5,
             (3, 5): 0.3, (5, 6): 0.6, (1, 6): 0.1}
    w = np.zeros((7, 7))
    for (i, j), v in edges.items():
        w[i, j] = w[j, i] = v
    return sp.csr_matrix(w)


@pytest.mark.parametrize("solver", ["dense", "arpack"])
def test_eigenmap_matches_dense_generalized_solution(solver):
    w = hand_graph()
    dense = w.toarray()
    degree = np.diag(dense.sum(axis=1))
    values, vectors = scipy.linalg.eigh(degree - dense, degree)
    assert np.diff(values).min() > 1e-3  # distinct, so each eigenvector is unique up to sign
    y = laplacian_eigenmap(w, bits=3, seed=0, solver=solver)
    expected = vectors[:, 1:4]  # skip the trivial (constant, lambda = 0) one
    signs = np.sign((y * expected).sum(axis=0))
    np.testing.assert_allclose(y, expected * signs, atol=1e-8)
    np.testing.assert_allclose(y.T @ degree @ y, np.eye(3), atol=1e-8)  # y^T D y = I, as eigh(L, D)


def test_eigenmap_signs_are_fixed_and_too_few_documents_rejected():
    y = laplacian_eigenmap(hand_graph(), bits=3, seed=0, solver="dense")
    biggest = np.abs(y * np.sqrt(hand_graph().sum(axis=1).A)).argmax(axis=0)  # argmax of |u| = |D^1/2 y|
    assert (y[biggest, np.arange(3)] > 0).all()
    with pytest.raises(ValueError, match="at least bits \\+ 1 = 8"):
        laplacian_eigenmap(hand_graph(), bits=7, seed=0)


def test_median_threshold_balances_bits():
    y = np.array([[3.0, -1.0], [1.0, 0.0], [2.0, 5.0], [0.0, 2.0]])
    np.testing.assert_array_equal(median_bits(y), [[1, 0], [0, 0], [1, 1], [0, 1]])


def test_isolated_and_empty_documents_get_a_sane_fit():
    train, _ = two_clusters(20, seed=0)
    train = sp.vstack([train, sp.csr_matrix((3, 60), dtype=np.float32)]).tocsr()  # 3 empty rows
    model = create_model(ModelConfig(name="sth", bits=4, neighbours=5), 60)
    model.fit_closed_form(train)
    codes = model.encode(to_torch(train))
    assert torch.isfinite(model.coef).all() and torch.isfinite(model.intercept).all()
    assert codes.shape == (43, 4)
    assert (codes[-3:] == codes[-1]).all()  # empty rows: x = 0, so the intercepts alone decide


def test_deterministic_and_safetensors_round_trip(tmp_path):
    train, _ = two_clusters(20, seed=0)
    unseen, _ = two_clusters(10, seed=1)
    config = ModelConfig(name="sth", bits=6, neighbours=5, seed=4)
    unfitted = create_model(config, 60)
    assert unfitted.encode(to_torch(unseen)).shape == (20, 6)  # encodes before any fit
    first, second = create_model(config, 60), create_model(config, 60)
    first.fit_closed_form(train)
    second.fit_closed_form(train)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    codes = first.encode(to_torch(unseen))
    assert torch.equal(codes, first.embed(to_torch(unseen).to_dense()) > 0)
    save_file(first.state_dict(), str(tmp_path / "sth.safetensors"))
    restored = create_model(config, 60)
    restored.load_state_dict(load_file(str(tmp_path / "sth.safetensors")))
    assert torch.equal(restored.encode(to_torch(unseen)), codes)
    assert restored.coef.dtype == torch.float32 and restored.coef.shape == (60, 6)


def test_fit_rejects_too_few_documents_and_wrong_width():
    train, _ = two_clusters(3, seed=0)  # 6 documents
    with pytest.raises(ValueError, match="at least bits \\+ 1 = 9 train documents, got 6"):
        create_model(ModelConfig(name="sth", bits=8), 60).fit_closed_form(train)
    with pytest.raises(ValueError, match="built for 61 features, got 60"):
        create_model(ModelConfig(name="sth", bits=2), 61).fit_closed_form(train)
