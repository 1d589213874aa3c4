"""SNUH (Ou, Su, Yu, Liu, Wang, Zhao, Chen and Zheng, ACL 2021, "Integrating Semantics and Neighborhood Information
with Graph-Driven Generative Models for Document Retrieval"): a Gaussian VAE whose prior over all documents' latent
codes is induced by the document graph, learned under a tree-structured approximation of that graph.

The model, per the paper and the authors' code (github.com/J-zin/SNUH, model/SNUH.py, utils/data.py):
- posterior q(z|x) = N(mu, diag sigma^2) with mu = sigmoid(l(x) / T) (T = `code_temperature`), sigma = softplus(.);
  the decoder (the shared softmax one) reads z = mu + sigma * eps; codes are 1[mu > 1/2] = 1[l > 0];
- prior: p(z_i) = N(0, I) per document and p(z_i, z_j) = N(0, [[I, tau I], [tau I, I]]) on a graph edge
  (tau = `prior_correlation`, 0.99 as in the authors' code); the posterior of an edge
  correlates its two documents' codes per bit by gamma_ij = 2 sigmoid(a(x_i, x_j)) - 1, a learned function of the pair;
- the tree approximation: over a spanning tree T of the graph the joint prior and posterior factorise into
  singleton and pairwise terms, and the KL becomes
      sum_i KL(q_i || p_i) + sum_{(i,j) in T} [KL(q_ij || p_ij) - KL(q_i || p_i) - KL(q_j || p_j)];
  the pairwise bracket (`edge_kl`) is analytic for Gaussians. Averaged over `trees` sampled spanning trees, an
  edge's term is weighted by w_ij, the fraction of the trees that hold it.
- loss per document: -log p(x_i | z_i) + kl_weight * (KL_i + edge terms), the edge terms scaled so that their sum
  over the corpus is the tree average's (the authors weight a batch of edges by |E| / N).

Where this differs from the authors' code, and why:
- the pairwise term uses log(1 - gamma^2), the exact log-determinant of the edge posterior's covariance; the
  authors' code writes log(1 - gamma), which drops log(1 + gamma) (tested against a hand computation here);
- the node term is the exact KL; the authors' code sums mu^2 + sigma^2 - 1 - 2 log sigma, twice it (their beta
  0.05 then weighs nodes as 0.1 does here);
- spanning trees: the authors grow, from a uniformly drawn unvisited root, a star to each of its unvisited directed
  top-k neighbours until every document is visited, so their alpha (a softmax temperature over the cosines) only
  orders the picks and never changes which edges are kept. Here each tree is the maximum spanning forest of the
  symmetric kNN graph under Gumbel-perturbed weights cos_ij / `tree_temperature` + G_ij (scipy's MST, O(E log E)):
  a random spanning forest that keeps similar pairs more often as the temperature falls, built in seconds for
  100k documents. Trees are drawn once per run from the training seed, as the authors draw them once per run;
- the encoder (`encoder`): 'linear' by default, the authors' (run.sh: `--num_layers 0`, `--init 0.05`): each
  posterior head a linear map of the TF-IDF input, every weight of the model from uniform(+-0.05). 'mlp' uses the
  platform's two hidden layers instead, its mean head's initial weights scaled by T so that l / T starts where l
  would at T = 1 (unscaled, its logits over T = 0.1 saturate the sigmoid from the first step); the correlation
  network is theirs at `--num_layers 0`: a linear map of the pair, symmetrised, which is a linear map of x_i + x_j;
  gamma is kept within +-(1 - 1e-3) (theirs: 1 - 1e-8, which is 1 in float32) so log(1 - gamma^2) stays finite;
- measured on 20ng-18828 at 64 bits (results/best.md §6): with the MLP encoder, the authors' tau 0.99 pulled every
  code to one value (the pairwise term pulls neighbours' means together with weight ~1 / (2 (1 - tau)) per bit, 50
  at tau 0.99, over trees that connect the corpus): val p@100 0.0507, chance, for 8 epochs at beta 0.1, 0.3 and 1,
  annealed or not; tau 0.9 learned (val 0.6203, test 0.6090). The linear encoder at the authors' tau 0.99 learns
  and does better (val 0.64 by epoch 18): it is the default, with tau 0.99; use tau 0.9 with 'mlp'. A KL weight
  annealed from 0 lets the first epochs collapse the posterior's scale (every shared recipe anneals), and the shared
  beta 1 pulls too hard: the model's own recipe (`GraphGaussianVAE.recipe`, after --recipe, before the flags) is
  the authors' for 20ng at 64 bits, a fixed beta 0.05, lr 1e-3, batches of 128, clipping at 10, 15 neighbours and
  13 trees;
- each document of a batch is paired with one tree neighbour j drawn with probability w_ij / d_i and its edge term
  scaled by d_i / 2 (d_i = sum_j w_ij): an unbiased estimate of the same sum over tree edges, through the same
  pairing as the other neighbour-aware models (train/neighbours.py), instead of a separate stream of edges.

`corrsh-snuh` composes SNUH's graph prior with CorrSH's correlated posterior where that is sound: the Gaussian
stage of CorrSH's posterior, z ~ N(mu, D + UU^T) (rank v, U = tanh(.)/v as in CorrSH), with the edge posterior
correlating only the diagonal parts of two documents' noise, so the pair's covariance [[S_i, C], [C, S_j]],
C = diag(gamma sigma_i sigma_j), is a valid one by construction. Its node KL and pairwise term are exact (the
matrix determinant lemma, and Woodbury's identity on the Schur complement S_j - C S_i^-1 C: O(m v^2) a pair).
CorrSH's Bernoulli stage and its k-mixture bound do not compose: SNUH decodes the continuous z and its KL to a
Gaussian prior is analytic.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import minimum_spanning_tree
from torch import Tensor, nn

from corrhash.models import register
from corrhash.models.base import (
    HashModel,
    MLPEncoder,
    Noise,
    SoftmaxDecoder,
    SparseLinear,
    as_batch,
    draw_normal,
    present_word_log_likelihood,
    word_presence,
)
from corrhash.models.config import ModelConfig
from corrhash.models.space import LOW_RANK_SPACE, TREE_PRIOR_SPACE, VAE_RECIPE_SPACE

GAMMA_BOUND = 1.0 - 1e-3
"""|gamma| stays below this, so the edge posterior's covariance stays positive definite in float32."""
LINEAR_INIT = 0.05
"""The linear encoder's weights (and every other) start uniform in +-this (the authors' run.sh: --init 0.05)."""
SIGMA_FLOOR = 1e-4
"""Added to softplus(.) so log sigma and D^-1 stay finite."""


def spanning_tree_weights(graph: sp.spmatrix, trees: int, temperature: float, seed: int) -> sp.csr_matrix:
    """The symmetric [n, n] CSR of w_ij: the fraction of `trees` random spanning forests of `graph` (symmetric,
    weighted by cosines) that hold edge ij; each forest is the maximum spanning forest under the perturbed weights
    cos_ij / temperature + Gumbel noise."""
    upper = sp.triu(sp.csr_matrix(graph), k=1).tocoo()
    n = graph.shape[0]
    if upper.nnz == 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    order = np.lexsort((upper.col, upper.row))
    rows, cols, cosines = upper.row[order], upper.col[order], upper.data[order]
    keys = rows.astype(np.int64) * n + cols
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(keys))
    for _ in range(trees):
        perturbed = cosines / temperature + rng.gumbel(size=len(keys))
        cost = perturbed.max() - perturbed + 1.0  # positive; the minimum-cost forest is the maximum-weight one
        forest = minimum_spanning_tree(sp.csr_matrix((cost, (rows, cols)), shape=(n, n))).tocoo()
        low, high = np.minimum(forest.row, forest.col), np.maximum(forest.row, forest.col)
        counts[np.searchsorted(keys, low.astype(np.int64) * n + high)] += 1
    kept = counts > 0
    weights = sp.coo_matrix((counts[kept] / trees, (rows[kept], cols[kept])), shape=(n, n))
    return (weights + weights.T).tocsr().astype(np.float32)


def node_kl(mu: Tensor, sigma: Tensor, u: Tensor | None) -> Tensor:
    """KL(N(mu, diag sigma^2 + UU^T) || N(0, I)) per document."""
    trace = sigma.square().sum(-1)
    logdet = 2.0 * sigma.log().sum(-1)
    if u is not None:
        trace = trace + u.square().sum((-1, -2))
        logdet = logdet + _logdet(_capacitance(sigma.square(), u))  # the matrix determinant lemma
    return 0.5 * (mu.square().sum(-1) + trace - mu.shape[-1] - logdet)


def _logdet(matrix: Tensor) -> Tensor:
    return 2.0 * torch.linalg.cholesky(matrix).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _capacitance(diagonal: Tensor, w: Tensor) -> Tensor:
    """I + W^T diag(diagonal)^-1 W, [B, r, r]: det(D + WW^T) = det D det(this) (matrix determinant lemma)."""
    scaled = w / diagonal.sqrt().unsqueeze(-1)
    return torch.eye(w.shape[-1], dtype=w.dtype, device=w.device) + scaled.transpose(-1, -2) @ scaled


def _low_rank_mutual(sigma_i: Tensor, u_i: Tensor, sigma_j: Tensor, u_j: Tensor, gamma: Tensor) -> Tensor:
    """log det Q - log det S_i - log det S_j for S = diag(sigma^2) + UU^T and the cross-covariance
    C = diag(gamma sigma_i sigma_j), in O(m v^2), never forming an m x m matrix: by Woodbury, with
    K_i = I + U_i^T D_i^-1 U_i = L L^T and V = C D_i^-1 U_i,
        S_j - C S_i^-1 C = diag(sigma_j^2 (1 - gamma^2)) + U_j U_j^T + (V L^-T)(V L^-T)^T,
    a diagonal plus a rank-2v term whose determinant the lemma gives from a 2v x 2v matrix. In float64: with |gamma|
    near its bound the diagonal is small against the low-rank part (float32's factorisations failed there)."""
    dtype = sigma_i.dtype
    sigma_i, u_i, sigma_j, u_j, gamma = (t.double() for t in (sigma_i, u_i, sigma_j, u_j, gamma))
    lower = torch.linalg.cholesky(_capacitance(sigma_i.square(), u_i))
    v = (gamma * sigma_j / sigma_i).unsqueeze(-1) * u_i
    y = torch.linalg.solve_triangular(lower, v.transpose(-1, -2), upper=False).transpose(-1, -2)
    residual = sigma_j.square() * (1.0 - gamma.square())
    w = torch.cat([u_j, y], dim=-1)
    mutual = (torch.log1p(-gamma.square()).sum(-1) + _logdet(_capacitance(residual, w))
              - _logdet(_capacitance(sigma_j.square(), u_j)))
    return mutual.to(dtype)


def edge_kl(mu_i: Tensor, sigma_i: Tensor, u_i: Tensor | None, mu_j: Tensor, sigma_j: Tensor, u_j: Tensor | None,
            gamma: Tensor, tau: float) -> Tensor:
    """KL(q_ij || p_ij) - KL(q_i || p_i) - KL(q_j || p_j) per pair: q_ij the pair's Gaussian posterior (marginals
    N(mu, diag sigma^2 + UU^T), cross-covariance diag(gamma sigma_i sigma_j)), p_ij = N(0, [[I, tau I],
    [tau I, I]]), p_i = N(0, I)."""
    m = mu_i.shape[-1]
    cross = gamma * sigma_i * sigma_j
    trace_i, trace_j = sigma_i.square().sum(-1), sigma_j.square().sum(-1)
    if u_i is not None:
        trace_i, trace_j = trace_i + u_i.square().sum((-1, -2)), trace_j + u_j.square().sum((-1, -2))
    squares = mu_i.square().sum(-1) + mu_j.square().sum(-1) + trace_i + trace_j
    coupled = (squares - 2.0 * tau * (cross.sum(-1) + (mu_i * mu_j).sum(-1))) / (1.0 - tau ** 2)
    if u_i is None:
        # log det Q - log det S_i - log det S_j = sum log(1 - gamma^2) when each S is diagonal
        mutual = torch.log1p(-gamma.square()).sum(-1)
    else:
        mutual = _low_rank_mutual(sigma_i, u_i, sigma_j, u_j, gamma)
    return 0.5 * (coupled - squares + m * math.log(1.0 - tau ** 2) - mutual)


class GraphGaussianVAE(HashModel):
    """SNUH's model; `correlated` adds CorrSH's low-rank covariance to the Gaussian posterior (corrsh-snuh)."""

    uses_neighbours = True
    uses_graph = True
    pairs_weighted = True
    correlated = False
    # No decoder-noise floor (z is already noisy) and no dropout: the authors' linear encoder has no hidden layer.
    search_space = {**{k: v for k, v in VAE_RECIPE_SPACE.items() if k not in ("noise_floor", "dropout")},
                    **TREE_PRIOR_SPACE}
    also_searchable = ("encoder",)
    # SNUH's authors' recipe for 20ng at 64 bits (run.sh): a fixed beta (any recipe's annealing from 0 collapses the
    # codes, see above), lr 1e-3, batches of 128, clipping at 10, 15 neighbours, 13 trees.
    recipe = {"beta": 0.05, "anneal_step": 0.0, "lr": 1e-3, "batch_size": 128, "grad_clip": 10.0, "neighbours": 15,
              "trees": 13}

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        self.rank = config.rank if self.correlated else 0
        heads = {"mean_head": config.bits, "scale_head": config.bits, "rank_head": config.bits * self.rank}
        if config.encoder == "linear":  # each head a linear map of the input (the authors' --num_layers 0)
            self.encoder = None
            for name, width in heads.items():
                setattr(self, name, SparseLinear(n_features, width) if width else None)
        else:
            self.encoder = MLPEncoder(n_features, config.hidden)
            for name, width in heads.items():
                setattr(self, name, nn.Linear(config.hidden, width) if width else None)
            with torch.no_grad():  # l / T starts where l would at T = 1: at T = 0.1 the MLP's logits saturate
                self.mean_head.weight.mul_(config.code_temperature)
                self.mean_head.bias.mul_(config.code_temperature)
        self.correlation = SparseLinear(n_features, config.bits)
        self.decoder = SoftmaxDecoder(config.bits, n_features)
        if config.encoder == "linear":
            with torch.no_grad():  # the authors' --init 0.05: every weight uniform in +-0.05
                for parameter in self.parameters():
                    parameter.uniform_(-LINEAR_INIT, LINEAR_INIT)

    @staticmethod
    def default_anneal_step(config: ModelConfig) -> float:
        return 0.0  # the authors fix beta; annealed from 0, the first epochs collapse sigma (see above)

    def pairing_graph(self, graph: sp.spmatrix, seed: int) -> sp.csr_matrix:
        """The tree-averaged edge weights w_ij of the document graph: what training pairs documents along."""
        return spanning_tree_weights(graph, self.config.trees, self.config.tree_temperature, seed)

    def posterior(self, x: Tensor, dropout_mask: Tensor | None = None):
        """logits l [B, m] (mu = sigmoid(l / T)), sigma [B, m], U [B, m, v] (None without rank)."""
        h = word_presence(x) if self.config.encoder_input == "binary" else x
        if self.encoder is not None:
            h = self.encoder(h, dropout_mask)
        u = None
        if self.rank_head is not None:
            u = torch.tanh(self.rank_head(h)).view(-1, self.bits, self.rank) / self.rank  # CorrSH's U
        return self.mean_head(h), F.softplus(self.scale_head(h)) + SIGMA_FLOOR, u

    def sample_noise(self, batch_size, device, generator=None) -> Noise:
        dtype = self.thresholds.dtype
        noise = {"dropout": self._dropout_mask((2, batch_size, self.config.hidden), device, generator),
                 "neighbour_dropout": self._dropout_mask((2, batch_size, self.config.hidden), device, generator),
                 "eps": draw_normal((batch_size, self.bits), device, dtype, generator)}
        if self.rank:
            noise["eps_rank"] = draw_normal((batch_size, self.rank), device, dtype, generator)
        return noise

    def edge_correlation(self, x: Tensor, neighbours: Tensor) -> Tensor:
        """gamma_ij per bit from the pair, symmetric in (i, j)."""
        a = self.correlation(x) + self.correlation(neighbours) - self.correlation.bias
        return GAMMA_BOUND * torch.tanh(0.5 * a)  # = 2 sigmoid(a) - 1, bounded

    def loss_from_noise(self, x: Tensor, noise: Noise, neighbours: Tensor | None = None,
                        pair_scale: Tensor | None = None) -> dict[str, Tensor]:
        x = as_batch(x)
        train = self.training
        logits, sigma, u = self.posterior(x, noise["dropout"] if train else None)
        mu = torch.sigmoid(logits / self.config.code_temperature)
        z = mu + sigma * noise["eps"]
        if u is not None:
            z = z + torch.einsum("bmv,bv->bm", u, noise["eps_rank"])
        recon = -present_word_log_likelihood(self.decoder(z), x)
        kl = node_kl(mu, sigma, u)
        if neighbours is None:
            return {"loss": (recon + self.kl_weight * kl).mean(), "recon": recon.mean(), "kl": kl.mean()}
        neighbours = as_batch(neighbours)
        logits_j, sigma_j, u_j = self.posterior(neighbours, noise["neighbour_dropout"] if train else None)
        mu_j = torch.sigmoid(logits_j / self.config.code_temperature)
        gamma = self.edge_correlation(x, neighbours)
        edge = edge_kl(mu, sigma, u, mu_j, sigma_j, u_j, gamma, self.config.prior_correlation)
        edge = edge * (pair_scale if pair_scale is not None else 1.0)
        loss = recon + self.kl_weight * (kl + edge)
        return {"loss": loss.mean(), "recon": recon.mean(), "kl": kl.mean(), "neighbour": edge.mean()}

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.posterior(as_batch(x))[0]  # codes 1[l > 0] = 1[mu > 1/2] (the authors' mu.round())


@register("snuh")
class SNUH(GraphGaussianVAE):
    """SNUH: Gaussian posterior, graph-induced Gaussian prior under the tree approximation."""


@register("corrsh-snuh")
class CorrSHSNUH(GraphGaussianVAE):
    """SNUH's graph prior with CorrSH's low-rank correlated Gaussian posterior (rank v)."""

    correlated = True
    search_space = {**GraphGaussianVAE.search_space, "rank": LOW_RANK_SPACE["rank"]}
