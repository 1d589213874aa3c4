"""The VAE shared by the binary-code hashing models, with the posterior over codes and the prior over codes as
parts: encoder h(x) -> posterior q(s|x) -> straight-through code s -> noisy softmax decoder p(w|s), plus a KL
estimate of q against the prior p(s).

A model is one posterior part and one prior part (mixins, so their layers keep flat state_dict names such as
`mean_head.weight`, the names saved model folders already use):

    posterior (models/posteriors.py)          prior (models/priors.py)      registered as
    IndependentBernoulli                      UniformPrior                  nash
    IndependentBernoulli                      BernoulliMixturePrior         bmsh
    LowRankBoltzmann (rank v, mixture k)      UniformPrior                  corrsh
    LowRankBoltzmann (rank v, mixture k)      BernoulliMixturePrior         corrsh-mixture

and, optionally, the neighbourhood part (models/neighbours.py, PairRec's pairwise reconstruction from the document
graph): each of the four with `NeighbourReconstruction` is registered as NAME-nbr (nash-nbr, bmsh-nbr, corrsh-nbr,
corrsh-mixture-nbr). It provides `uses_neighbours = True` and `neighbour_term(log_probs, neighbours)`.

What a posterior part provides: `build_posterior(config)`, `posterior_noise(...)` (its random numbers),
`code_distribution(h)`, `sample_code(dist, noise) -> (s, draw)` (s straight-through; `draw`: what
the KL needs of the sampling), `code_kl(dist, s, draw, noise, h)` (per document; the posterior decides how to
estimate it and asks the prior part for its terms) and `code_scores(dist)` (the real values whose sign is the
code). What a prior part provides: `build_prior(config, factorized)`, `prior_log_prob(s)` (exact
log p(s)) and `prior_cross_entropy(logits, h)` (-E_q log p(s) for a factorized q, or the bound its paper uses).

Recipes: ModelConfig's defaults are the authors' recipe (the KL weight and decoder noise anneal by 1/(50v + 50k)
per epoch, 1/1000 without v, k; `--recipe authors`), which leaves the KL weight at 0.1 after 100 epochs. The jobs
start from `--recipe converge` instead (step 0.05: full weight at epoch 20; 150 epochs), where these models stop on a
plateau (train/recipes.py, results/best.md). Every knob of both is a ModelConfig/TrainConfig field.
"""

from __future__ import annotations

import torch
from torch import Tensor

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


class BinaryCodeVAE(HashModel):
    """Encoder, posterior part, prior part, decoder; subclasses list a posterior and a prior mixin first, and add
    their parts' dimensions to the shared recipe's in `search_space`."""

    search_space = VAE_RECIPE_SPACE
    also_searchable = ("hidden",)

    factorized_posterior: bool = False
    """True when q(s|x) is a product of independent Bernoullis (priors may then use an analytic term)."""

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        # Construction order fixes the weight initialisation under one seed: encoder, posterior heads, prior,
        # decoder (with the uniform prior, exactly the order CorrSH and NASH always had).
        self.encoder = MLPEncoder(n_features, config.hidden, config.encoder_input == "binary")
        self.build_posterior(config)
        self.build_prior(config, self.factorized_posterior)
        self.decoder = SoftmaxDecoder(config.bits, n_features)

    def sample_noise(self, batch_size, device, generator=None) -> Noise:
        dtype = self.thresholds.dtype
        return {
            "dropout": self._dropout_mask((2, batch_size, self.config.hidden), device, generator),
            **self.posterior_noise(batch_size, device, dtype, generator),
            "decoder": draw_normal((batch_size, self.bits), device, dtype, generator),
        }

    def loss_from_noise(self, x: Tensor, noise: Noise, neighbours: Tensor | None = None) -> dict[str, Tensor]:
        x = as_batch(x)
        h = self.encoder(x, noise["dropout"] if self.training else None)
        dist = self.code_distribution(h)
        s, draw = self.sample_code(dist, noise)
        code = s + self.noise_scale * noise["decoder"] if self.training else s
        log_probs = self.decoder(code)
        recon = -present_word_log_likelihood(log_probs, x)
        kl = self.code_kl(dist, s, draw, noise, h)
        loss = recon + self.kl_weight * kl
        if neighbours is None:
            return {"loss": loss.mean(), "recon": recon.mean(), "kl": kl.mean()}
        pairwise = self.neighbour_term(log_probs, as_batch(neighbours))
        loss = loss + self.config.neighbour_weight * pairwise
        return {"loss": loss.mean(), "recon": recon.mean(), "kl": kl.mean(), "neighbour": pairwise.mean()}

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.code_scores(self.code_distribution(self.encoder(as_batch(x))))
