"""NASH (Shen, Su, Chapfuwa, Wang, Wang, Henao and Carin, ACL 2018, "NASH: Toward End-to-End Neural Architecture
for Generative Semantic Hashing"): independent Bernoulli posterior, straight-through samples, noisy softmax
decoder, analytic KL to the uniform Bernoulli(1/2) prior.

Simplification: the decoder noise is NASH's fixed-schedule variant (annealed from 1 to a floor, as CorrSH's
authors' code does for every model), not its data-dependent-noise variant (NASH-DN).
"""

from __future__ import annotations

from corrhash.models import register
from corrhash.models.binary_vae import BinaryCodeVAE
from corrhash.models.posteriors import IndependentBernoulli
from corrhash.models.priors import UniformPrior


@register("nash")
class NASH(IndependentBernoulli, UniformPrior, BinaryCodeVAE):
    """Independent posterior + uniform prior."""
