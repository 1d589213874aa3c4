"""CorrSH (Zheng, Su, Shen and Chen, ACL 2020, "Generative Semantic Hashing Enhanced via Boltzmann Machines"):
Boltzmann-machine posterior over the code bits, sampled as r ~ N(mu, D + UU^T) then s ~ Bernoulli(sigmoid(r)),
trained with the asymptotically exact lower bound built on the k-component mixture h_k(s) (eqs. 20-26; the
posterior part is `LowRankBoltzmann` in models/posteriors.py).

The paper argues its correlated posterior "can be used with all existing VAE-based hashing models"; corrsh-mixture
takes it at its word: the same posterior with BMSH's learned Bernoulli-mixture prior (no published code has it).
Its bound replaces the uniform prior's m log 2 by the exact -log p(s) of the mixture at the posterior sample.

corrsh-nbr and corrsh-mixture-nbr add the neighbourhood part (models/neighbours.py): to our knowledge no published
model combines a correlated posterior with neighbourhood information.
"""

from __future__ import annotations

from corrhash.models import register
from corrhash.models.binary_vae import BinaryCodeVAE
from corrhash.models.neighbours import NeighbourReconstruction
from corrhash.models.posteriors import LowRankBoltzmann
from corrhash.models.priors import BernoulliMixturePrior, UniformPrior
from corrhash.models.space import LOW_RANK_SPACE, MIXTURE_PRIOR_SPACE, NEIGHBOUR_SPACE, VAE_RECIPE_SPACE


@register("corrsh")
class CorrSH(LowRankBoltzmann, UniformPrior, BinaryCodeVAE):
    """Correlated posterior + uniform prior."""

    search_space = {**VAE_RECIPE_SPACE, **LOW_RANK_SPACE}
    also_searchable = ("hidden", "energy_terms")


@register("corrsh-mixture")
class CorrSHMixture(LowRankBoltzmann, BernoulliMixturePrior, BinaryCodeVAE):
    """Correlated posterior + learned Bernoulli-mixture prior."""

    search_space = {**VAE_RECIPE_SPACE, **LOW_RANK_SPACE, **MIXTURE_PRIOR_SPACE}
    also_searchable = ("hidden", "energy_terms")


@register("corrsh-nbr")
class CorrSHNeighbours(NeighbourReconstruction, LowRankBoltzmann, UniformPrior, BinaryCodeVAE):
    """Correlated posterior + uniform prior + PairRec's pairwise reconstruction from the document graph."""

    search_space = {**VAE_RECIPE_SPACE, **LOW_RANK_SPACE, **NEIGHBOUR_SPACE}
    also_searchable = ("hidden", "energy_terms")


@register("corrsh-mixture-nbr")
class CorrSHMixtureNeighbours(NeighbourReconstruction, LowRankBoltzmann, BernoulliMixturePrior, BinaryCodeVAE):
    """Correlated posterior + learned Bernoulli-mixture prior + pairwise reconstruction from the document graph."""

    search_space = {**VAE_RECIPE_SPACE, **LOW_RANK_SPACE, **MIXTURE_PRIOR_SPACE, **NEIGHBOUR_SPACE}
    also_searchable = ("hidden", "energy_terms")
