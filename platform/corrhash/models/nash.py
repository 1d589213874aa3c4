"""NASH (Shen et al., ACL 2018): independent Bernoulli posterior, straight-through
samples, noisy softmax decoder, analytic KL to the uniform Bernoulli(1/2) prior."""

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
    draw_normal,
    draw_uniform,
    present_word_log_likelihood,
    straight_through_bernoulli,
)
from corrhash.models.config import ModelConfig


@register("nash")
class NASH(HashModel):
    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        self.encoder = MLPEncoder(n_features, config.hidden)
        self.logit_head = nn.Linear(config.hidden, config.bits)
        self.decoder = SoftmaxDecoder(config.bits, n_features)

    def logits(self, x: Tensor, dropout_mask: Tensor | None = None) -> Tensor:
        return self.logit_head(self.encoder(x, dropout_mask))

    def sample_noise(self, batch_size, device, generator=None) -> Noise:
        dtype = self.thresholds.dtype
        return {
            "dropout": self._dropout_mask((2, batch_size, self.config.hidden), device, generator),
            "uniform": draw_uniform((batch_size, self.bits), device, dtype, generator),
            "decoder": draw_normal((batch_size, self.bits), device, dtype, generator),
        }

    def loss_from_noise(self, x: Tensor, noise: Noise) -> dict[str, Tensor]:
        x = as_batch(x)
        logits = self.logits(x, noise["dropout"] if self.training else None)
        q = torch.sigmoid(logits)
        s = straight_through_bernoulli(q, noise["uniform"])
        code = s + self.noise_scale * noise["decoder"] if self.training else s
        recon = -present_word_log_likelihood(self.decoder(code), x)
        # KL(Bern(q) || Bern(1/2)) = sum q log q + (1-q) log(1-q) + log 2, via log-sigmoids.
        neg_entropy = (q * F.logsigmoid(logits) + (1 - q) * F.logsigmoid(-logits)).sum(-1)
        kl = neg_entropy + self.bits * math.log(2.0)
        return {"loss": (recon + self.kl_weight * kl).mean(), "recon": recon.mean(), "kl": kl.mean()}

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.logits(as_batch(x))  # threshold 0 on logits == sigmoid > 0.5
