"""Spectral Hashing (Weiss, Torralba and Fergus, NIPS 2008, "Spectral Hashing").

Follows the authors' reference code (trainSH.m / compressSH.m), i.e. the paper's Section 3.1 algorithm:

1. PCA: the npca = min(bits, n_features) leading eigenvectors of the train covariance.
2. Project the train rows on them and take, per direction, the range [min, max] of the projections
   (the fitted uniform distribution of step 2 of the paper's algorithm).
3. The one-dimensional eigenfunctions of the Laplacian of a uniform distribution on [a, b] (paper eq. 5)
   are Phi_k(x) = sin(pi/2 + k pi (x - a)/(b - a)), with eigenvalue increasing in omega = k pi/(b - a).
   Enumerate the single-direction modes k = 1, 2, ... of every direction (as trainSH: k < ceil((bits+1)
   R_i / max R) per direction, which always holds enough candidates), drop the constant mode and keep the
   `bits` with the smallest omega (the smallest eigenvalues: paper eq. 6 / trainSH's `sort(-eigVal)`; the
   sort is stable so ties go to the earlier direction, then the smaller k, as MATLAB's sort does).
   A direction may give several bits.
4. Codes: bit b = Phi_b(x) > 0 (compressSH's `U > 0`).

Simplifications and choices, and why:
- Projections are not centred (neither are the reference code's, "no need to remove the mean"): the per
  direction minimum is subtracted instead, so the mean cancels.
- The reference widens the range by machine eps (min - eps, max + eps); that changes nothing measurable and
  is left out. A direction whose train range is zero (a constant projection) gives no modes.
- sin(pi/2 + t) is computed as cos(t), the same function with one rounding fewer.
- PCA never densifies the corpus: the covariance acts as an implicit operator C v = X^T (X v)/n - mu (mu^T v)
  inside ARPACK (scipy eigsh, seeded start vector); only when npca = n_features (ARPACK needs k < n) is the
  small n_features x n_features covariance formed and fully decomposed. Each direction's sign is fixed
  (largest-|.| coordinate positive) so that the codes do not flip between solvers or runs.
- The unfitted model holds zero buffers (omega = 0, so every bit is 1): it encodes, it is just useless.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor

from corrhash.models import register
from corrhash.models.base import HashModel, as_batch
from corrhash.models.config import ModelConfig


def principal_directions(features: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
    """[n_features, k] leading eigenvectors of the (biased) covariance of the rows, largest first,
    each with its largest-|.| coordinate positive. Float64; the corpus stays sparse."""
    x = sp.csr_matrix(features, dtype=np.float64)
    n, d = x.shape
    mu = np.asarray(x.mean(axis=0)).ravel()
    if k >= d:  # ARPACK needs k < d; then d is at most `bits`, so the d x d covariance is tiny
        cov = (x.T @ x).toarray() / n - np.outer(mu, mu)
        values, vectors = np.linalg.eigh(cov)
    else:
        xt = x.T.tocsr()

        def covariance_times(v: np.ndarray) -> np.ndarray:
            v = v.reshape(d, -1)
            return xt @ (x @ v) / n - np.outer(mu, mu @ v)

        operator = LinearOperator((d, d), matvec=covariance_times, matmat=covariance_times, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(d)
        values, vectors = eigsh(operator, k=k, which="LA", v0=v0)
    order = np.argsort(-values, kind="stable")[:k]
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    return vectors * np.where(signs == 0, 1.0, signs)


def smallest_modes(ranges: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(direction, omega) of the `bits` single-direction modes with the smallest omega = k pi / R,
    enumerated as trainSH does (direction-major, k ascending) and stably sorted."""
    widest = ranges.max()
    if not widest > 0:
        raise ValueError("spectral hashing needs train rows that are not all identical (every PCA range is 0)")
    directions, omegas = [], []
    for i, r in enumerate(ranges):
        if r > 0:
            max_mode = math.ceil((bits + 1) * r / widest)
            for k in range(1, max_mode):
                directions.append(i)
                omegas.append(k * math.pi / r)
    order = np.argsort(np.square(omegas), kind="stable")[:bits]
    return np.asarray(directions, dtype=np.int64)[order], np.asarray(omegas)[order]


@register("sph")
class SpectralHashing(HashModel):
    trainable = False

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        self.npca = min(config.bits, n_features)
        # Buffers, not parameters: they checkpoint with the model but are never optimised.
        self.register_buffer("projection", torch.zeros(n_features, self.npca))
        self.register_buffer("minimum", torch.zeros(self.npca))
        self.register_buffer("direction", torch.zeros(config.bits, dtype=torch.int64))
        self.register_buffer("omega", torch.zeros(config.bits))

    def loss(self, x: Tensor, generator: torch.Generator | None = None,
             neighbours: Tensor | None = None) -> dict[str, Tensor]:
        raise RuntimeError("sph is not trainable (trainable=False): it has no loss; fit_closed_form() fits it")

    def fit_closed_form(self, features: sp.csr_matrix, graph: sp.csr_matrix | None = None) -> None:
        features = sp.csr_matrix(features)
        if features.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {features.shape[1]}")
        directions = principal_directions(features, self.npca, self.config.seed)
        # Ranges from the float32 projection embed() will compute, so train points map into [0, R].
        projection = directions.astype(np.float32)
        projected = np.asarray(features.astype(np.float32) @ projection, dtype=np.float64)
        low, high = projected.min(axis=0), projected.max(axis=0)
        direction, omega = smallest_modes(high - low, self.bits)
        self.projection.copy_(torch.from_numpy(projection))
        self.minimum.copy_(torch.from_numpy(low))
        self.direction.copy_(torch.from_numpy(direction))
        self.omega.copy_(torch.from_numpy(omega))

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        x = as_batch(x)
        projected = torch.sparse.mm(x, self.projection) if x.layout == torch.sparse_csr else x @ self.projection
        return torch.cos(self.omega * (projected[:, self.direction] - self.minimum[self.direction]))
