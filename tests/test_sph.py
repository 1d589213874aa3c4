"""Spectral Hashing (corrhash.models.sph) against hand-computed modes/codes and numpy's PCA."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

import corrhash.models.sph  # noqa: F401  (registers "sph")
from corrhash.models import ModelConfig, create_model

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def to_torch(m: sp.csr_matrix) -> torch.Tensor:
    m = sp.csr_matrix(m, dtype=np.float32)
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr).long(), torch.from_numpy(m.indices).long(),
                                   torch.from_numpy(m.data), m.shape, check_invariants=True)


def grid(width: float, height: float) -> np.ndarray:
    """5000 points of a regular grid on [0, width] x [0, height]: a uniform sample whose covariance is
    exactly diagonal (so PCA gives the axes) and, with 99 and 49 steps (odd), no point on a zero of
    cos(k pi x / R) for k <= 3, so the codes have no rounding-dependent ties."""
    xs, ys = np.meshgrid(np.linspace(0, width, 100), np.linspace(0, height, 50), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def random_sparse(n: int, d: int, seed: int, density: float = 0.1) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = sp.random(n, d, density=density, format="csr", dtype=np.float32, random_state=rng)
    # a few strong, distinct directions so the leading eigenvalues are well separated
    strong = np.outer(rng.standard_normal(n), np.linspace(2, 0.5, d)).astype(np.float32)
    return sp.csr_matrix(m + (m != 0).multiply(strong), dtype=np.float32)


@pytest.mark.parametrize(
    "height,bits,expected",
    [
        # R = (4, 1): omegas k pi / 4 on the long axis beat pi / 1 on the short one for k = 1, 2, 3
        (1.0, 3, [(0, 1), (0, 2), (0, 3)]),
        # R = (4, 1.5): pi/4 < 2pi/4 < pi/1.5 (short axis, k = 1) < 3pi/4 -- directions interleave
        (1.5, 4, [(0, 1), (0, 2), (1, 1), (0, 3)]),
    ],
)
def test_uniform_rectangle_modes_and_codes_match_hand_computation(height, bits, expected):
    points = grid(4.0, height)
    model = create_model(ModelConfig(name="sph", bits=bits), 2)
    model.fit_closed_form(sp.csr_matrix(points.astype(np.float32)))

    assert model.projection.shape == (2, 2)  # npca = min(bits, n_features)
    torch.testing.assert_close(model.projection.abs(), torch.eye(2), atol=1e-6, rtol=0)
    assert (model.projection.diagonal() > 0).all()  # sign fixed: largest coordinate positive
    torch.testing.assert_close(model.minimum, torch.zeros(2), atol=1e-6, rtol=0)
    ranges = (4.0, height)
    assert model.direction.tolist() == [d for d, _ in expected]
    torch.testing.assert_close(
        model.omega, torch.tensor([k * math.pi / ranges[d] for d, k in expected], dtype=torch.float32)
    )

    by_hand = np.stack(
        [np.sin(math.pi / 2 + k * math.pi * (points[:, d] - 0.0) / ranges[d]) > 0 for d, k in expected], axis=1
    )
    codes = model.encode(to_torch(sp.csr_matrix(points))).numpy()
    assert np.array_equal(codes, by_hand)
    assert np.array_equal(model.encode(torch.from_numpy(points.astype(np.float32))).numpy(), by_hand)
    # first bit splits the long axis at its middle
    assert codes[:, 0].mean() == pytest.approx(0.5)


def test_pca_directions_match_numpy_covariance_eigenvectors():
    x = random_sparse(400, 60, seed=1)
    bits = 8
    model = create_model(ModelConfig(name="sph", bits=bits, seed=3), 60)
    model.fit_closed_form(x)

    values, vectors = np.linalg.eigh(np.cov(x.toarray().astype(np.float64), rowvar=False, bias=True))
    order = np.argsort(values)[::-1]
    gaps = -np.diff(values[order][: bits + 1])
    assert gaps.min() > 1e-3 * values.max()  # sanity: distinct eigenvalues, so directions are defined
    order = order[:bits]
    reference = vectors[:, order]
    got = model.projection.double().numpy()
    # same directions, same order, up to sign
    np.testing.assert_allclose(np.abs(np.sum(got * reference, axis=0)), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=0), 1.0, atol=1e-6)
    # the sign convention: each direction's largest-|.| coordinate is positive
    assert (got[np.abs(got).argmax(axis=0), np.arange(bits)] > 0).all()


def test_deterministic_and_state_dict_round_trip(tmp_path):
    train, unseen = random_sparse(500, 300, seed=2), random_sparse(50, 300, seed=5)
    config = ModelConfig(name="sph", bits=16, seed=7)
    first, second = create_model(config, 300), create_model(config, 300)
    first.fit_closed_form(train)
    second.fit_closed_form(train)
    for name, buffer in first.state_dict().items():
        assert torch.equal(buffer, second.state_dict()[name]), name
    assert first.direction.dtype == torch.int64
    codes = first.encode(to_torch(unseen))
    assert torch.equal(codes, second.encode(to_torch(unseen)))
    assert 0 < codes.float().mean() < 1

    path = tmp_path / "sph.safetensors"
    save_file(first.state_dict(), str(path))
    restored = create_model(config, 300)
    restored.load_state_dict(load_file(str(path)))
    assert torch.equal(restored.encode(to_torch(unseen)), codes)


def test_unfitted_model_encodes_and_has_no_loss():
    model = create_model(ModelConfig(name="sph", bits=8), 50)
    assert not model.trainable
    codes = model.encode(to_torch(random_sparse(10, 50, seed=0)))
    assert codes.shape == (10, 8) and codes.dtype == torch.bool
    with pytest.raises(RuntimeError, match="not trainable"):
        model.loss(to_torch(random_sparse(2, 50, seed=0)))


def test_fit_never_densifies_a_large_sparse_corpus(monkeypatch):
    """20000 x 200000 (16 GB dense as float32) with 5 non-zeros per row: the fit must stay sparse."""
    n, d, per_row = 20_000, 200_000, 5
    rng = np.random.default_rng(0)
    topic = rng.integers(0, 4, n)  # 4 groups of shared words give a few well-separated directions
    cols = np.concatenate([topic[:, None] * 3 + np.arange(3), rng.integers(12, d, (n, per_row - 3))], axis=1)
    values = rng.uniform(0.5, 1.5, (n, per_row)).astype(np.float32)
    x = sp.csr_matrix((values.ravel(), cols.ravel(), np.arange(0, n * per_row + 1, per_row)), shape=(n, d))
    x.sum_duplicates()

    def refuse(*args, **kwargs):
        raise AssertionError("densified a sparse matrix")

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    model = create_model(ModelConfig(name="sph", bits=4), d)
    start = time.perf_counter()
    model.fit_closed_form(x)
    assert time.perf_counter() - start < 10
    assert model.projection.shape == (d, 4) and torch.isfinite(model.projection).all()
    assert (model.omega > 0).all()
