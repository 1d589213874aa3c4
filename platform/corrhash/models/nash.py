"""NASH (Shen, Su, Chapfuwa, Wang, Wang, Henao and Carin, ACL 2018, "NASH: Toward End-to-End Neural Architecture
for Generative Semantic Hashing"): independent Bernoulli posterior, straight-through samples, noisy softmax
decoder, analytic KL to the uniform Bernoulli(1/2) prior. nash-nbr adds the neighbourhood part (models/neighbours.py).

Simplification: the decoder noise is NASH's fixed-schedule variant (annealed from 1 to a floor, as CorrSH's
authors' code does for every model), not its data-dependent-noise variant (NASH-DN).
"""

from __future__ import annotations

from corrhash.models import register
from corrhash.models.binary_vae import BinaryCodeVAE
from corrhash.models.neighbours import NeighbourReconstruction
from corrhash.models.posteriors import IndependentBernoulli
from corrhash.models.priors import UniformPrior
from corrhash.models.space import NEIGHBOUR_SPACE, VAE_RECIPE_SPACE


@register("nash")
class NASH(IndependentBernoulli, UniformPrior, BinaryCodeVAE):
    """Independent posterior + uniform prior."""


@register("nash-nbr")
class NASHNeighbours(NeighbourReconstruction, IndependentBernoulli, UniformPrior, BinaryCodeVAE):
    """NASH + PairRec's pairwise reconstruction from the document graph (models/neighbours.py)."""

    search_space = {**VAE_RECIPE_SPACE, **NEIGHBOUR_SPACE}
