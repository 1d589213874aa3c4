"""VDSH (Chaidaroon & Fang, SIGIR 2017): Gaussian VAE on TF-IDF; codes threshold the
posterior mean at each bit's median over the training set."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from corrhash.models import register
from corrhash.models.base import (
    HashModel,
    MLPEncoder,
    Noise,
    SoftmaxDecoder,
    as_batch,
    draw_normal,
    present_word_log_likelihood,
)
from corrhash.models.config import ModelConfig
from corrhash.models.space import VAE_RECIPE_SPACE


@register("vdsh")
class VDSH(HashModel):
    # The shared VAE recipe but the decoder-noise floor: VDSH's decoder reads its Gaussian sample, no added noise.
    search_space = {name: spec for name, spec in VAE_RECIPE_SPACE.items() if name != "noise_floor"}
    also_searchable = ("hidden",)

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        self.encoder = MLPEncoder(n_features, config.hidden, config.encoder_input == "binary")
        self.mean_head = nn.Linear(config.hidden, config.bits)
        # log-variance (VDSH's parameterisation) keeps log sigma^2 in the KL finite.
        self.logvar_head = nn.Linear(config.hidden, config.bits)
        self.decoder = SoftmaxDecoder(config.bits, n_features)

    def posterior(self, x: Tensor, dropout_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.encoder(x, dropout_mask)
        return self.mean_head(h), self.logvar_head(h)

    def sample_noise(self, batch_size, device, generator=None) -> Noise:
        return {
            "dropout": self._dropout_mask((2, batch_size, self.config.hidden), device, generator),
            "eps": draw_normal((batch_size, self.bits), device, self.thresholds.dtype, generator),
        }

    def loss_from_noise(self, x: Tensor, noise: Noise, neighbours: Tensor | None = None) -> dict[str, Tensor]:
        x = as_batch(x)
        mu, logvar = self.posterior(x, noise["dropout"] if self.training else None)
        z = mu + torch.exp(0.5 * logvar) * noise["eps"]
        recon = -present_word_log_likelihood(self.decoder(z), x)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)  # KL(N(mu, s^2) || N(0, I))
        return {"loss": (recon + self.kl_weight * kl).mean(), "recon": recon.mean(), "kl": kl.mean()}

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        mu, _ = self.posterior(as_batch(x))
        return mu

    @torch.no_grad()
    def calibrate(self, train_embeddings: Tensor) -> None:
        """Per-bit median of the training embeddings, so each bit splits the corpus in half."""
        medians = train_embeddings.to(self.thresholds).median(dim=0).values
        self.thresholds.copy_(medians)
