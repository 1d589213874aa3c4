"""The composable posterior and prior parts (models/posteriors.py, models/priors.py) against brute-force sums over
all 2^m codes at small m."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from corrhash.models import ModelConfig, create_model
from corrhash.models.posteriors import IndependentBernoulli, LowRankBoltzmann
from corrhash.models.priors import BernoulliMixturePrior, UniformPrior

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

BITS, COMPONENTS, HIDDEN, FEATURES = 4, 3, 8, 30


def all_codes(bits: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=bits)), dtype=torch.float64)


def bernoulli_prob(s: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """prod_i p_i^s_i (1 - p_i)^(1 - s_i), written out."""
    return (p**s * (1 - p) ** (1 - s)).prod(dim=-1)


def mixture_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(ModelConfig(name=name, bits=BITS, hidden=HIDDEN, components=COMPONENTS, rank=2, mixture=3),
                         FEATURES).double()
    with torch.no_grad():  # away from the initial zeros, so every term matters
        model.prior_component_logits.copy_(torch.tensor([0.3, -1.0, 0.8]))
    return model


@pytest.mark.parametrize("name,posterior,prior", [
    ("nash", IndependentBernoulli, UniformPrior),
    ("bmsh", IndependentBernoulli, BernoulliMixturePrior),
    ("corrsh", LowRankBoltzmann, UniformPrior),
    ("corrsh-mixture", LowRankBoltzmann, BernoulliMixturePrior),
])
def test_each_binary_vae_is_a_posterior_and_a_prior(name, posterior, prior):
    model = create_model(ModelConfig(name=name, bits=8, hidden=8), FEATURES)
    assert isinstance(model, posterior) and isinstance(model, prior)


def test_mixture_prior_log_prob_is_the_mixture_marginal():
    model = mixture_model("bmsh")
    codes = all_codes(BITS)
    pi = torch.softmax(model.prior_component_logits, 0)
    gamma = torch.sigmoid(model.prior_bit_logits)
    want = torch.stack([sum(pi[c] * bernoulli_prob(s, gamma[c]) for c in range(COMPONENTS)) for s in codes])
    got = model.prior_log_prob(codes).exp()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_bmsh_kl_matches_brute_force_sum_over_all_codes():
    """The closed form equals sum_s sum_c q(s) q(c) [log q(s) q(c) - log pi_c p(s|c)], and bounds the exact
    KL(q(s) || p(s)) from above (equal only when q(c|x) is the exact component posterior)."""
    model = mixture_model("bmsh")
    docs = 5
    h = torch.randn(docs, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    logits = model.code_distribution(h) * 3  # sharper than at init: probabilities near 0 and 1 too
    q_bits = torch.sigmoid(logits)
    got = model.code_kl(logits, None, q_bits, {}, h)

    codes = all_codes(BITS)
    pi = torch.softmax(model.prior_component_logits, 0)
    gamma = torch.sigmoid(model.prior_bit_logits)
    assign = torch.softmax(model.assignment_head(h), dim=1)
    for d in range(docs):
        q_s = torch.stack([bernoulli_prob(s, q_bits[d]) for s in codes])
        brute = sum(q_s[i] * assign[d, c] * (torch.log(q_s[i]) + torch.log(assign[d, c]) - torch.log(pi[c])
                                             - torch.log(bernoulli_prob(codes[i], gamma[c])))
                    for i in range(len(codes)) for c in range(COMPONENTS))
        torch.testing.assert_close(got[d], brute)
        p_s = torch.stack([sum(pi[c] * bernoulli_prob(s, gamma[c]) for c in range(COMPONENTS)) for s in codes])
        exact_kl = (q_s * (q_s.log() - p_s.log())).sum()
        assert got[d] >= exact_kl - 1e-12


def test_nash_kl_is_the_analytic_kl_to_the_uniform_prior():
    model = create_model(ModelConfig(name="nash", bits=BITS, hidden=HIDDEN), FEATURES).double()
    h = torch.randn(3, HIDDEN, dtype=torch.float64)
    logits = model.code_distribution(h)
    q = torch.sigmoid(logits)
    got = model.code_kl(logits, None, q, {}, h)
    codes = all_codes(BITS)
    for d in range(3):
        q_s = torch.stack([bernoulli_prob(s, q[d]) for s in codes])
        torch.testing.assert_close(got[d], (q_s * (q_s.log() + BITS * math.log(2))).sum())


def test_corrsh_mixture_with_a_flat_mixture_is_corrsh():
    """gamma = 1/2 in every component makes the mixture uniform, so corrsh-mixture's bound (-log p(s) exact) is
    CorrSH's (m log 2), term by term, with the same weights and noise."""
    x = torch.rand(6, FEATURES).to_sparse_csr()
    for energy_terms in (False, True):
        config = dict(bits=BITS, hidden=HIDDEN, rank=2, mixture=3, components=COMPONENTS, energy_terms=energy_terms)
        corrsh = create_model(ModelConfig(name="corrsh", **config), FEATURES)
        mixture = create_model(ModelConfig(name="corrsh-mixture", **config), FEATURES)
        missing, unexpected = mixture.load_state_dict(corrsh.state_dict(), strict=False)
        assert set(missing) == {"prior_component_logits", "prior_bit_logits"} and not unexpected
        with torch.no_grad():
            mixture.prior_bit_logits.zero_()
            mixture.prior_component_logits.copy_(torch.tensor([0.3, -1.0, 0.8]))
        for model in (corrsh, mixture):
            model.kl_weight.fill_(0.5)
        noise = corrsh.sample_noise(6, "cpu", torch.Generator().manual_seed(2))
        want, got = corrsh.loss_from_noise(x, noise), mixture.loss_from_noise(x, noise)
        for key in want:
            torch.testing.assert_close(got[key], want[key], msg=key)


def test_mixture_prior_parameters_learn():
    """The prior's pi and gamma get gradients through the KL term (BMSH and corrsh-mixture)."""
    x = torch.rand(6, FEATURES).to_sparse_csr()
    for name in ("bmsh", "corrsh-mixture"):
        model = create_model(ModelConfig(name=name, bits=BITS, hidden=HIDDEN, components=COMPONENTS), FEATURES)
        model.end_epoch()
        model.loss(x, generator=torch.Generator().manual_seed(0))["loss"].backward()
        assert model.prior_bit_logits.grad.abs().sum() > 0
        assert model.prior_component_logits.grad.abs().sum() > 0
        assert (model.assignment_head is None) == (name == "corrsh-mixture")
