"""LSH baseline (Datar et al., 2004): sign of seeded random Gaussian projections of the
TF-IDF vector. Nothing to train."""

from __future__ import annotations

import torch
from torch import Tensor

from corrhash.models import register
from corrhash.models.base import HashModel, as_batch
from corrhash.models.config import ModelConfig


@register("lsh")
class LSH(HashModel):
    trainable = False

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        generator = torch.Generator().manual_seed(config.seed)  # CPU: same projection on any device
        # A buffer, not a parameter: it checkpoints with the model but is never optimised.
        self.register_buffer("projection", torch.randn(n_features, config.bits, generator=generator))

    def loss(self, x: Tensor, generator: torch.Generator | None = None,
             neighbours: Tensor | None = None) -> dict[str, Tensor]:
        raise RuntimeError("lsh is not trainable (trainable=False): it has no loss; use embed()/encode()")

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        x = as_batch(x)
        if x.layout == torch.sparse_csr:
            return torch.sparse.mm(x, self.projection)
        return x @ self.projection  # threshold 0 == sign of the projection
