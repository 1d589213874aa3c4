"""Posterior parts of `BinaryCodeVAE` (models/binary_vae.py): how q(s|x) over the code bits is parameterised,
sampled and scored against the prior part.

- IndependentBernoulli: q(s|x) = prod_i Bernoulli(sigmoid(l_i(x))) (NASH, Shen et al., ACL 2018; BMSH). Its
  negative entropy is analytic, so KL = sum_i [q_i log q_i + (1-q_i) log(1-q_i)] + the prior's cross-entropy.
- LowRankBoltzmann: the Boltzmann-machine posterior of CorrSH (Zheng et al., ACL 2020), sampled as
  r ~ N(mu, D + UU^T) (rank v) then s ~ Bernoulli(sigmoid(r)); its log q is bounded through the k-component
  mixture h_k(s) = 1/k sum_j q(s|r^(j)), so KL <= log h_k(s~) - log p(s) (+ E(s~) - E(s), eq. 24).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from corrhash.models.base import (
    Noise,
    bernoulli_log_prob,
    draw_normal,
    draw_uniform,
    straight_through_bernoulli,
)
from corrhash.models.config import ModelConfig


class IndependentBernoulli:
    """q(s|x) = prod_i Bernoulli(sigmoid(logit_head(h))); codes are 1[logit > 0] (= q > 1/2)."""

    factorized_posterior = True

    def build_posterior(self, config: ModelConfig) -> None:
        self.logit_head = nn.Linear(config.hidden, config.bits)

    def posterior_noise(self, batch_size, device, dtype, generator) -> Noise:
        return {"uniform": draw_uniform((batch_size, self.bits), device, dtype, generator)}

    def code_distribution(self, h: Tensor) -> Tensor:
        return self.logit_head(h)

    def sample_code(self, logits: Tensor, noise: Noise) -> tuple[Tensor, Tensor]:
        """s, and q = sigmoid(logits) for the KL."""
        q = torch.sigmoid(logits)
        return straight_through_bernoulli(q, noise["uniform"]), q

    def code_kl(self, logits: Tensor, s: Tensor, q: Tensor, noise: Noise, h: Tensor) -> Tensor:
        # sum q log q + (1-q) log(1-q), via log-sigmoids so that saturated logits stay finite.
        neg_entropy = (q * F.logsigmoid(logits) + (1 - q) * F.logsigmoid(-logits)).sum(-1)
        return neg_entropy + self.prior_cross_entropy(logits, h)

    def code_scores(self, logits: Tensor) -> Tensor:
        return logits


class LowRankBoltzmann:
    """CorrSH's posterior: mu, sigma = softplus(.), U = tanh(.)/v per document; the bound uses k extra samples."""

    factorized_posterior = False

    def build_posterior(self, config: ModelConfig) -> None:
        self.rank, self.mixture = config.rank, config.mixture
        self.energy_terms = config.energy_terms
        self.mean_head = nn.Linear(config.hidden, config.bits)
        self.scale_head = nn.Linear(config.hidden, config.bits)
        # rank 0 means no perturbation: r is then an independent Gaussian per bit.
        self.rank_head = nn.Linear(config.hidden, config.bits * config.rank) if config.rank else None

    @staticmethod
    def default_anneal_step(config: ModelConfig) -> float:
        return 1.0 / (50 * config.rank + 50 * config.mixture)  # authors' code

    def posterior(self, x: Tensor, dropout_mask: Tensor | None = None):
        """mu [B, m], sigma [B, m] (D = diag(sigma^2)) and U [B, m, v] (None if v = 0) of documents x."""
        return self.code_distribution(self.encoder(x, dropout_mask))

    def code_distribution(self, h: Tensor):
        mu = self.mean_head(h)
        sigma = F.softplus(self.scale_head(h))
        u = None
        if self.rank_head is not None:
            # Each column tanh(linear(h)) / v keeps UU^T bounded as v grows (authors' code).
            u = torch.tanh(self.rank_head(h)).view(-1, self.bits, self.rank) / self.rank
        return mu, sigma, u

    def posterior_noise(self, batch_size, device, dtype, generator) -> Noise:
        """Sample 0 of eps_diag/eps_rank is r (reconstruction); 1..k are r^(1..k) of h_k.
        uniform[0] draws s from r, uniform[1] draws s~ from the chosen component."""
        m, k = self.bits, self.mixture
        return {
            "eps_diag": draw_normal((k + 1, batch_size, m), device, dtype, generator),
            "eps_rank": draw_normal((k + 1, batch_size, self.rank), device, dtype, generator),
            "uniform": draw_uniform((2, batch_size, m), device, dtype, generator),
            "component": torch.randint(k, (batch_size,), device=device, generator=generator),
        }

    def energy(self, s: Tensor, mu: Tensor, sigma: Tensor, u: Tensor | None) -> Tensor:
        """E(s) = -1/2 s^T (D + UU^T) s - mu^T s, with s^T UU^T s = ||U^T s||^2 so no
        m x m matrix is formed."""
        quadratic = (sigma.square() * s.square()).sum(-1)
        if u is not None:
            quadratic = quadratic + torch.einsum("bm,bmv->bv", s, u).square().sum(-1)
        return -0.5 * quadratic - (mu * s).sum(-1)

    def sample_code(self, dist, noise: Noise) -> tuple[Tensor, Tensor]:
        """s from r^(0), and r^(1..k) for the bound: r^(j) = mu + D^1/2 eps1 + U eps2 (eq. 26)."""
        mu, sigma, u = dist
        r = mu + sigma * noise["eps_diag"]
        if u is not None:
            r = r + torch.einsum("bmv,jbv->jbm", u, noise["eps_rank"])
        return straight_through_bernoulli(torch.sigmoid(r[0]), noise["uniform"][0]), r[1:]

    def code_kl(self, dist, s: Tensor, r_mix: Tensor, noise: Noise, h: Tensor) -> Tensor:
        mu, sigma, u = dist
        # s~ ~ h_k: pick component c uniformly, then Bernoulli(sigmoid(r^(c))) (App. A.3);
        # gradients flow through the chosen r^(c).
        rows = torch.arange(mu.shape[0], device=mu.device)
        r_chosen = r_mix[noise["component"], rows]
        s_tilde = straight_through_bernoulli(torch.sigmoid(r_chosen), noise["uniform"][1])
        # log h_k(s~) = logsumexp_j log q(s~|r^(j)) - log k, never forming h_k itself.
        log_h = torch.logsumexp(bernoulli_log_prob(s_tilde, r_mix), dim=0) - math.log(self.mixture)
        # -log p at the posterior sample s (eq. 24 takes E_q log p(s)); the uniform prior's is m log 2.
        kl = log_h - self.prior_log_prob(s)
        if self.energy_terms:
            # eq. 24: log h_k(s~) - log p(s) + E(s~) - E(s); log Z cancels between them.
            kl = kl + self.energy(s_tilde, mu, sigma, u) - self.energy(s, mu, sigma, u)
        return kl

    def code_scores(self, dist) -> Tensor:
        return dist[0]  # codes are 1[mu > 0] (authors' evaluation)
