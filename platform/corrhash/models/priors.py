"""Prior parts of `BinaryCodeVAE` (models/binary_vae.py): the distribution p(s) over m-bit codes.

- UniformPrior: p(s) = 2^-m (NASH, CorrSH). log p(s) = -m log 2 everywhere, and so is E_q log p(s) for any q.
- BernoulliMixturePrior: p(s) = sum_c pi_c prod_i gamma_ci^s_i (1 - gamma_ci)^(1 - s_i), pi = softmax(a),
  gamma = sigmoid(b), both learned (BMSH, Dong et al., EMNLP 2019; see models/bmsh.py for the paper).
  log p(s) at a sample is exact (a log-sum-exp over the c components). For a factorized posterior, BMSH's term
  introduces q(c|x) and bounds -E_q log p(s) <= sum_c q(c|x) CE(q(s|x), Bern(gamma_c)) + KL(q(c|x) || pi)
  (the bound is tight when q(c|x) is the exact component posterior); q(c|x) = softmax(assignment_head(h)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from corrhash.models.base import bernoulli_log_prob
from corrhash.models.config import ModelConfig


class UniformPrior:
    def build_prior(self, config: ModelConfig, factorized: bool) -> None:
        """No parameters."""

    def prior_log_prob(self, s: Tensor) -> float:
        return -self.bits * math.log(2.0)

    def prior_cross_entropy(self, logits: Tensor, h: Tensor) -> float:
        return self.bits * math.log(2.0)


class BernoulliMixturePrior:
    def build_prior(self, config: ModelConfig, factorized: bool) -> None:
        components = config.components
        self.components = components
        self.prior_component_logits = nn.Parameter(torch.zeros(components))
        # Random bit probabilities break the symmetry between components (equal ones would stay equal).
        self.prior_bit_logits = nn.Parameter(torch.randn(components, config.bits))
        # q(c|x): only the factorized posterior's bound uses it (corrsh-mixture evaluates log p(s) exactly).
        self.assignment_head = nn.Linear(config.hidden, components) if factorized else None

    def component_log_probs(self, s: Tensor) -> Tensor:
        """log pi_c + log p(s | c), [B, C]."""
        log_pi = F.log_softmax(self.prior_component_logits, dim=0)
        return log_pi + bernoulli_log_prob(s.unsqueeze(1), self.prior_bit_logits)

    def prior_log_prob(self, s: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_probs(s), dim=1)

    def prior_cross_entropy(self, logits: Tensor, h: Tensor) -> Tensor:
        """BMSH's sum_c q(c|x) CE(q(s|x), gamma_c) + KL(q(c|x) || pi), per document."""
        q = torch.sigmoid(logits).unsqueeze(1)  # [B, 1, m]
        gamma = self.prior_bit_logits  # [C, m]
        cross_entropy = -(q * F.logsigmoid(gamma) + (1 - q) * F.logsigmoid(-gamma)).sum(-1)  # [B, C]
        log_assign = F.log_softmax(self.assignment_head(h), dim=1)
        assign = log_assign.exp()
        log_pi = F.log_softmax(self.prior_component_logits, dim=0)
        return (assign * cross_entropy).sum(1) + (assign * (log_assign - log_pi)).sum(1)
