"""S-RBM: stacked RBMs for semantic hashing.

Sources:
- Salakhutdinov & Hinton, "Semantic Hashing", International Journal of Approximate Reasoning 50(7), 2009:
  a stack of RBMs (word-count layer -> hidden -> hidden -> code), each trained with contrastive
  divergence (CD-1); codes are the top layer's logistic activations thresholded at 0.5.
- Salakhutdinov & Hinton, "Replicated Softmax: an Undirected Topic Model", NIPS 2009: the bottom layer.

What is implemented:
- Bottom layer: a Replicated Softmax RBM (NIPS 2009, eq. 4-6) with energy
  E(v, h) = -v.W.h - v.b - D h.a, so p(h_j = 1 | v) = sigmoid(v.W_j + D a_j) and the free energy is
  F(v) = -v.b - sum_j softplus(v.W_j + D a_j). We chose it over the constrained-Poisson layer of the
  Semantic Hashing paper because CD-1 is written below as a free-energy difference, and the
  constrained-Poisson layer defines only conditionals (its Poisson rate is renormalised to the document
  length after the fact), no joint energy and hence no free energy. The two layers have the same mean
  reconstruction, D * softmax(W h + b), which is what we use.
- Two binary-binary RBMs: F(v) = -v.b - sum_j softplus(v.W_j + c_j).
- Sizes: n_features -> config.hidden -> config.hidden -> config.bits.
- CD-1 as a surrogate loss: per layer mean_batch(F(v0) - F(v1.detach())), with h0 ~ p(h | v0) sampled
  from pre-drawn uniforms and v1 the mean-field reconstruction from h0 (D * softmax for the replicated
  softmax, sigmoid for binary layers). Its autograd gradient is exactly minus the CD-1 update
  <v p(h|v)>_data - <v p(h|v)>_recon (and the biases' <v> / <p(h|v)> differences), i.e. the usual
  CD-1 with hidden probabilities in both phases (Hinton, "A Practical Guide to Training Restricted
  Boltzmann Machines", UTML TR 2010-003, section 3.3).
- Codes: mean activations are passed up deterministically; embed() returns the top layer's
  pre-sigmoid activation, and threshold 0 there is p(h = 1 | v) > 0.5.

Simplifications, and why:
- Data: the shards hold L2-normalised TF-IDF, not counts. Word presence (TF-IDF > 0) is the count
  vector, so D = the number of distinct words of the document, as the project's VAE decoders use.
- The three RBMs are trained simultaneously, not greedily one after another: the project has one
  epoch loop (Adam on model(x)["loss"]), so the loss is the sum of the three layers' surrogates and
  each layer's input is the DETACHED mean activation of the layer below. Each layer's gradient is
  thus exactly its own CD-1 gradient given the current lower layers (the lower layers drift while the
  upper ones learn, which greedy training avoids); Adam replaces the paper's SGD with momentum and
  weight decay.
- The paper's second stage, unrolling the stack into a deep autoencoder fine-tuned by
  back-propagation with deterministic code noise, is NOT included: this is the pretrained stack only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from corrhash.models import register
from corrhash.models.base import HashModel, Noise, as_batch, draw_uniform, present_word_log_likelihood
from corrhash.models.config import ModelConfig
from corrhash.models.space import LOOP_SPACE

# Small random weights, zero biases (Hinton's practical guide, section 8).
INIT_STD = 0.01


class BinaryRBM(nn.Module):
    """Binary visible, binary hidden: F(v) = -v.b - sum_j softplus(v.W_j + c_j)."""

    def __init__(self, n_visible: int, n_hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_visible, n_hidden) * INIT_STD)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))

    def hidden_logits(self, v: Tensor) -> Tensor:
        return v @ self.weight + self.hidden_bias

    def free_energy(self, v: Tensor) -> Tensor:
        return -(v @ self.visible_bias) - F.softplus(self.hidden_logits(v)).sum(-1)

    def cd1(self, v0: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor]:
        """(CD-1 surrogate, p(h | v0)); v0 is the (detached) data, uniform draws h0."""
        p0 = torch.sigmoid(self.hidden_logits(v0))
        h0 = (uniform < p0.detach()).to(v0.dtype)
        v1 = torch.sigmoid(h0 @ self.weight.T + self.visible_bias)
        surrogate = (self.free_energy(v0) - self.free_energy(v1.detach())).mean()
        return surrogate, p0


class ReplicatedSoftmaxRBM(nn.Module):
    """Word-presence visible units (D = number of present words), binary hidden units whose bias is
    scaled by D: F(v) = -v.b - sum_j softplus(v.W_j + D a_j)."""

    def __init__(self, n_features: int, n_hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, n_hidden) * INIT_STD)
        self.visible_bias = nn.Parameter(torch.zeros(n_features))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))

    def presence_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(v.W [B, H], v.b [B], D [B]) for presence v = 1[x > 0], without densifying a CSR x."""
        if x.layout == torch.sparse_csr:
            weights = (x.values() > 0).to(self.weight.dtype)
            # One embedding bag over [W | b]: CSR @ W with presence weights, backward is an index_add.
            table = torch.cat([self.weight, self.visible_bias.unsqueeze(1)], dim=1)
            sums = F.embedding_bag(x.col_indices(), table, x.crow_indices(), mode="sum",
                                   per_sample_weights=weights, include_last_offset=True)
            crow = x.crow_indices()
            rows = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device),
                                           (crow[1:] - crow[:-1]).long())
            length = weights.new_zeros(x.shape[0]).index_add(0, rows, weights)
            return sums[:, :-1], sums[:, -1], length
        v = (x > 0).to(self.weight.dtype)
        return v @ self.weight, v @ self.visible_bias, v.sum(-1)

    def free_energy_parts(self, vw: Tensor, vb: Tensor, length: Tensor) -> Tensor:
        return -vb - F.softplus(vw + length.unsqueeze(1) * self.hidden_bias).sum(-1)

    def free_energy(self, v: Tensor) -> Tensor:
        """F of a dense count vector v (D = its sum): for tests and the reconstruction."""
        return self.free_energy_parts(v @ self.weight, v @ self.visible_bias, v.sum(-1))

    def cd1(self, x: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(CD-1 surrogate, p(h | v0), -sum over present words of log softmax reconstruction)."""
        vw, vb, length = self.presence_terms(x)
        p0 = torch.sigmoid(vw + length.unsqueeze(1) * self.hidden_bias)
        h0 = (uniform < p0.detach()).to(vw.dtype)
        log_probs = F.log_softmax(h0 @ self.weight.T + self.visible_bias, dim=-1)
        # Mean field: the D words are redrawn from the softmax, so their expected counts are D * softmax.
        v1 = (length.unsqueeze(1) * log_probs.exp()).detach()
        surrogate = (self.free_energy_parts(vw, vb, length) - self.free_energy(v1)).mean()
        recon = -present_word_log_likelihood(log_probs, x)
        return surrogate, p0, recon


@register("srbm")
class SRBM(HashModel):
    search_space = LOOP_SPACE  # CD-1 has no KL, dropout or decoder noise: only the loop's own dimensions
    also_searchable = ("hidden",)

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        self.bottom = ReplicatedSoftmaxRBM(n_features, config.hidden)
        self.middle = BinaryRBM(config.hidden, config.hidden)
        self.top = BinaryRBM(config.hidden, config.bits)

    def sample_noise(self, batch_size, device, generator=None) -> Noise:
        dtype, hidden = self.thresholds.dtype, self.config.hidden
        return {
            "bottom": draw_uniform((batch_size, hidden), device, dtype, generator),
            "middle": draw_uniform((batch_size, hidden), device, dtype, generator),
            "top": draw_uniform((batch_size, self.bits), device, dtype, generator),
        }

    def loss_from_noise(self, x: Tensor, noise: Noise, neighbours: Tensor | None = None) -> dict[str, Tensor]:
        x = as_batch(x)
        bottom, p1, recon = self.bottom.cd1(x, noise["bottom"])
        middle, p2 = self.middle.cd1(p1.detach(), noise["middle"])
        top, _ = self.top.cd1(p2.detach(), noise["top"])
        loss = bottom + middle + top
        return {"loss": loss, "recon": recon.mean(), "kl": torch.zeros_like(loss)}

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        vw, _, length = self.bottom.presence_terms(as_batch(x))
        p1 = torch.sigmoid(vw + length.unsqueeze(1) * self.bottom.hidden_bias)
        p2 = torch.sigmoid(self.middle.hidden_logits(p1))
        return self.top.hidden_logits(p2)
