"""BMSH (Dong, Su, Shen and Chen, EMNLP 2019, "Document Hashing with Mixture-Prior Generative Models"): NASH's
encoder and decoder with a learned Bernoulli-mixture prior p(s) = sum_c pi_c prod_i Bernoulli(s_i; gamma_ci).

The variational family is q(s, c|x) = q(s|x) q(c|x), both factorized, so the KL term of the ELBO is the
paper's closed form
    KL(q(c|x) || pi) + sum_c q(c|x) KL(q(s|x) || Bernoulli(gamma_c))
  = sum_i [q_i log q_i + (1-q_i) log(1-q_i)] + sum_c q(c|x) CE(q(s|x), gamma_c) + KL(q(c|x) || pi),
written as the independent posterior's negative entropy plus `BernoulliMixturePrior.prior_cross_entropy`.

Simplifications, and why:
- q(c|x) is a softmax layer on the encoder's last hidden layer, not a separate network on x: same inputs, one
  encoder to train and time, as for the other VAEs here.
- The decoder noise is the annealed noise every VAE here uses (see nash.py), not BMSH's data-dependent variance,
  so that BMSH and NASH differ only in the prior, the comparison the paper makes.
"""

from __future__ import annotations

from corrhash.models import register
from corrhash.models.binary_vae import BinaryCodeVAE
from corrhash.models.neighbours import NeighbourReconstruction
from corrhash.models.posteriors import IndependentBernoulli
from corrhash.models.priors import BernoulliMixturePrior
from corrhash.models.space import MIXTURE_PRIOR_SPACE, NEIGHBOUR_SPACE, VAE_RECIPE_SPACE


@register("bmsh")
class BMSH(IndependentBernoulli, BernoulliMixturePrior, BinaryCodeVAE):
    """Independent posterior + learned Bernoulli-mixture prior."""

    search_space = {**VAE_RECIPE_SPACE, **MIXTURE_PRIOR_SPACE}


@register("bmsh-nbr")
class BMSHNeighbours(NeighbourReconstruction, IndependentBernoulli, BernoulliMixturePrior, BinaryCodeVAE):
    """BMSH + PairRec's pairwise reconstruction from the document graph (models/neighbours.py)."""

    search_space = {**VAE_RECIPE_SPACE, **MIXTURE_PRIOR_SPACE, **NEIGHBOUR_SPACE}
