"""CorrSH (Zheng et al., ACL 2020): Boltzmann-machine posterior over the code bits,
sampled as r ~ N(mu, D + UU^T) then s ~ Bernoulli(sigmoid(r)), trained with the
asymptotically exact lower bound built on the k-component mixture h_k(s)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from corrhash.models import register
from corrhash.models.base import (
    HashModel,
    MLPEncoder,
    Noise,
    SoftmaxDecoder,
    as_batch,
    bernoulli_log_prob,
    draw_normal,
    draw_uniform,
    present_word_log_likelihood,
    straight_through_bernoulli,
)
from corrhash.models.config import ModelConfig


@register("corrsh")
class CorrSH(HashModel):
    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        self.rank, self.mixture = config.rank, config.mixture
        self.energy_terms = config.energy_terms
        self.encoder = MLPEncoder(n_features, config.hidden)
        self.mean_head = nn.Linear(config.hidden, config.bits)
        self.scale_head = nn.Linear(config.hidden, config.bits)
        # rank 0 means no perturbation: r is then an independent Gaussian per bit.
        self.rank_head = nn.Linear(config.hidden, config.bits * config.rank) if config.rank else None
        self.decoder = SoftmaxDecoder(config.bits, n_features)

    @staticmethod
    def default_anneal_step(config: ModelConfig) -> float:
        return 1.0 / (50 * config.rank + 50 * config.mixture)  # authors' code

    def posterior(self, x: Tensor, dropout_mask: Tensor | None = None):
        """mu [B, m], sigma [B, m] (D = diag(sigma^2)) and U [B, m, v] (None if v = 0)."""
        h = self.encoder(x, dropout_mask)
        mu = self.mean_head(h)
        sigma = F.softplus(self.scale_head(h))
        u = None
        if self.rank_head is not None:
            # Each column tanh(linear(h)) / v keeps UU^T bounded as v grows (authors' code).
            u = torch.tanh(self.rank_head(h)).view(-1, self.bits, self.rank) / self.rank
        return mu, sigma, u

    def sample_noise(self, batch_size, device, generator=None) -> Noise:
        """Sample 0 of eps_diag/eps_rank is r (reconstruction); 1..k are r^(1..k) of h_k.
        uniform[0] draws s from r, uniform[1] draws s~ from the chosen component."""
        dtype, m, k = self.thresholds.dtype, self.bits, self.mixture
        return {
            "dropout": self._dropout_mask((2, batch_size, self.config.hidden), device, generator),
            "eps_diag": draw_normal((k + 1, batch_size, m), device, dtype, generator),
            "eps_rank": draw_normal((k + 1, batch_size, self.rank), device, dtype, generator),
            "uniform": draw_uniform((2, batch_size, m), device, dtype, generator),
            "component": torch.randint(k, (batch_size,), device=device, generator=generator),
            "decoder": draw_normal((batch_size, m), device, dtype, generator),
        }

    def energy(self, s: Tensor, mu: Tensor, sigma: Tensor, u: Tensor | None) -> Tensor:
        """E(s) = -1/2 s^T (D + UU^T) s - mu^T s, with s^T UU^T s = ||U^T s||^2 so no
        m x m matrix is formed."""
        quadratic = (sigma.square() * s.square()).sum(-1)
        if u is not None:
            quadratic = quadratic + torch.einsum("bm,bmv->bv", s, u).square().sum(-1)
        return -0.5 * quadratic - (mu * s).sum(-1)

    def loss_from_noise(self, x: Tensor, noise: Noise) -> dict[str, Tensor]:
        x = as_batch(x)
        mu, sigma, u = self.posterior(x, noise["dropout"] if self.training else None)
        # r^(j) = mu + D^1/2 eps1 + U eps2 (eq. 26) for the main sample and all k extras.
        r = mu + sigma * noise["eps_diag"]
        if u is not None:
            r = r + torch.einsum("bmv,jbv->jbm", u, noise["eps_rank"])
        r_main, r_mix = r[0], r[1:]

        s = straight_through_bernoulli(torch.sigmoid(r_main), noise["uniform"][0])
        code = s + self.noise_scale * noise["decoder"] if self.training else s
        recon = -present_word_log_likelihood(self.decoder(code), x)

        # s~ ~ h_k: pick component c uniformly, then Bernoulli(sigmoid(r^(c))) (App. A.3);
        # gradients flow through the chosen r^(c).
        rows = torch.arange(x.shape[0], device=r.device)
        r_chosen = r_mix[noise["component"], rows]
        s_tilde = straight_through_bernoulli(torch.sigmoid(r_chosen), noise["uniform"][1])
        # log h_k(s~) = logsumexp_j log q(s~|r^(j)) - log k, never forming h_k itself;
        # the uniform prior gives -log p(s~) = m log 2.
        log_h = torch.logsumexp(bernoulli_log_prob(s_tilde, r_mix), dim=0) - math.log(self.mixture)
        kl = log_h + self.bits * math.log(2.0)
        if self.energy_terms:
            # eq. 24: log h_k(s~) - log p(s) + E(s~) - E(s); log Z cancels between them.
            kl = kl + self.energy(s_tilde, mu, sigma, u) - self.energy(s, mu, sigma, u)

        return {
            "loss": (recon + self.kl_weight * kl).mean(),
            "recon": recon.mean(),
            "kl": kl.mean(),
        }

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        mu, _, _ = self.posterior(as_batch(x))
        return mu  # codes are 1[mu > 0] (authors' evaluation)
