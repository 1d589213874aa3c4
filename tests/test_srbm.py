"""S-RBM (stacked RBMs, Salakhutdinov & Hinton 2009): CD-1 surrogate gradients against hand-written
CD-1 updates, the replicated-softmax free energy against a brute-force sum, and learning on a toy corpus."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import corrhash.models.srbm  # noqa: F401  (registers "srbm")
from corrhash.models import ModelConfig, create_model
from corrhash.models.srbm import BinaryRBM, ReplicatedSoftmaxRBM

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def csr(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).to_sparse_csr()


def test_binary_rbm_surrogate_gradient_is_the_cd1_update():
    """2 visible units, 1 hidden unit, two documents: the CD-1 update written out unit by unit."""
    rbm = BinaryRBM(2, 1).double()
    w, b, c = [0.5, -1.0], [0.2, -0.3], 0.1
    with torch.no_grad():
        rbm.weight.copy_(torch.tensor([[w[0]], [w[1]]]))
        rbm.visible_bias.copy_(torch.tensor(b))
        rbm.hidden_bias.fill_(c)
    v0s = [[1.0, 0.0], [1.0, 1.0]]
    uniforms = [0.3, 0.9]

    # By hand: p0 = p(h=1|v0), h0 = 1[u < p0], v1_i = sigmoid(w_i h0 + b_i), p1 = p(h=1|v1).
    dw, db, dc = [0.0, 0.0], [0.0, 0.0], 0.0
    for v0, u in zip(v0s, uniforms):
        p0 = sigmoid(w[0] * v0[0] + w[1] * v0[1] + c)
        h0 = 1.0 if u < p0 else 0.0
        v1 = [sigmoid(w[0] * h0 + b[0]), sigmoid(w[1] * h0 + b[1])]
        p1 = sigmoid(w[0] * v1[0] + w[1] * v1[1] + c)
        for i in range(2):
            dw[i] += (v0[i] * p0 - v1[i] * p1) / len(v0s)  # <v h>_data - <v h>_recon
            db[i] += (v0[i] - v1[i]) / len(v0s)
        dc += (p0 - p1) / len(v0s)
    # The two documents take different branches of the hidden sample (h0 = 1, then 0).
    assert sigmoid(0.5 + 0.1) > 0.3 and sigmoid(0.5 - 1.0 + 0.1) < 0.9

    surrogate, p0 = rbm.cd1(torch.tensor(v0s, dtype=torch.float64),
                            torch.tensor(uniforms, dtype=torch.float64).unsqueeze(1))
    surrogate.backward()
    # Gradient descent on the surrogate is the CD-1 ascent step: gradient = -update.
    torch.testing.assert_close(rbm.weight.grad, -torch.tensor([[dw[0]], [dw[1]]], dtype=torch.float64))
    torch.testing.assert_close(rbm.visible_bias.grad, -torch.tensor(db, dtype=torch.float64))
    torch.testing.assert_close(rbm.hidden_bias.grad, -torch.tensor([dc], dtype=torch.float64))
    want_p0 = torch.tensor([sigmoid(0.6), sigmoid(-0.4)], dtype=torch.float64)
    torch.testing.assert_close(p0.squeeze(1), want_p0)


def test_replicated_softmax_free_energy_against_brute_force():
    """F(v) = -log sum_h exp(-E(v, h)), E = -v.W.h - v.b - D h.a, summed over all 2^3 hidden states."""
    torch.manual_seed(0)
    rbm = ReplicatedSoftmaxRBM(4, 3).double()
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(torch.randn_like(p))
    tfidf = [[0.6, 0.0, 0.8, 0.0], [0.5, 0.5, 0.5, 0.5]]  # presence: words {0, 2}, D = 2; all, D = 4
    W, b, a = rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()
    want = []
    for row in tfidf:
        v = torch.tensor([1.0 if x > 0 else 0.0 for x in row], dtype=torch.float64)
        D = v.sum()
        total = sum(math.exp(float(v @ W @ torch.tensor(h, dtype=torch.float64) + v @ b
                                   + D * (a @ torch.tensor(h, dtype=torch.float64))))
                    for h in itertools.product([0.0, 1.0], repeat=3))
        want.append(-math.log(total))
    want = torch.tensor(want, dtype=torch.float64)

    presence = (torch.tensor(tfidf, dtype=torch.float64) > 0).double()
    torch.testing.assert_close(rbm.free_energy(presence), want)
    # The sparse path: TF-IDF values become presence weights and D counts the stored words.
    x = torch.tensor(tfidf, dtype=torch.float64).to_sparse_csr()
    vw, vb, length = rbm.presence_terms(x)
    torch.testing.assert_close(length, torch.tensor([2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(rbm.free_energy_parts(vw, vb, length), want)


def test_replicated_softmax_surrogate_gradient_is_the_cd1_update():
    """Bottom layer: v1 = D softmax(W h0 + b) (mean field), hidden probabilities in both phases."""
    torch.manual_seed(1)
    rbm = ReplicatedSoftmaxRBM(5, 2).double()
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.tensor([[0.7, 0.0, 0.7, 0.14, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    u = torch.tensor([[0.2, 0.7], [0.5, 0.1]], dtype=torch.float64)
    W, b, a = (p.detach() for p in (rbm.weight, rbm.visible_bias, rbm.hidden_bias))
    v0 = (x > 0).double()
    D = v0.sum(1, keepdim=True)
    p0 = torch.sigmoid(v0 @ W + D * a)
    h0 = (u < p0).double()
    v1 = D * torch.softmax(h0 @ W.T + b, dim=1)
    p1 = torch.sigmoid(v1 @ W + D * a)
    update_w = (v0.T @ p0 - v1.T @ p1) / 2
    update_b = (v0 - v1).mean(0)
    update_a = (D * (p0 - p1)).mean(0)

    surrogate, _, recon = rbm.cd1(x.to_sparse_csr(), u)
    surrogate.backward()
    torch.testing.assert_close(rbm.weight.grad, -update_w)
    torch.testing.assert_close(rbm.visible_bias.grad, -update_b)
    torch.testing.assert_close(rbm.hidden_bias.grad, -update_a)
    log_softmax = torch.log_softmax(h0 @ W.T + b, dim=1)
    torch.testing.assert_close(recon, -(log_softmax * v0).sum(1))


@pytest.fixture(scope="module")
def small_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(16, 50, generator=g) * (torch.rand(16, 50, generator=g) < 0.2)
    dense[:, 0] = 0.3  # no empty document
    return torch.nn.functional.normalize(dense, dim=1).to_sparse_csr()


def test_loss_gradients_determinism_and_layer_independence(small_batch):
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="srbm", bits=8, hidden=12), 50)
    out = model.loss(small_batch, generator=torch.Generator().manual_seed(3))
    assert set(out) == {"loss", "recon", "kl"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["kl"].item() == 0.0 and out["recon"].item() > 0
    out["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    again = model.loss(small_batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again["loss"], out["loss"])
    assert not torch.equal(model.loss(small_batch, generator=torch.Generator().manual_seed(4))["loss"],
                           out["loss"])
    noise = model.sample_noise(16, "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(model.loss_from_noise(small_batch, noise)["loss"], out["loss"])
    dense = model.loss_from_noise(small_batch.to_dense(), noise)
    torch.testing.assert_close(dense["loss"], out["loss"])

    # Each layer's gradient is its own CD-1 gradient: upper layers send nothing down.
    bottom_grad = model.bottom.weight.grad.clone()
    model.zero_grad()
    model.bottom.cd1(small_batch, noise["bottom"])[0].backward()
    torch.testing.assert_close(model.bottom.weight.grad, bottom_grad)

    # Codes: the deterministic mean-field pass, thresholded at p = 0.5.
    presence = (small_batch.to_dense() > 0).float()
    length = presence.sum(1, keepdim=True)
    p1 = torch.sigmoid(presence @ model.bottom.weight + length * model.bottom.hidden_bias)
    p2 = torch.sigmoid(p1 @ model.middle.weight + model.middle.hidden_bias)
    p3 = torch.sigmoid(p2 @ model.top.weight + model.top.hidden_bias)
    torch.testing.assert_close(model.embed(small_batch), torch.logit(p3), rtol=1e-4, atol=1e-4)
    assert torch.equal(model.encode(small_batch), model.embed(small_batch) > 0)


def two_topic_corpus(docs_per_topic: int, words_per_topic: int, words_per_doc: int, seed: int):
    """Topic t's documents use only words [t * words_per_topic, (t + 1) * words_per_topic)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(2 * docs_per_topic, 2 * words_per_topic)
    topics = torch.arange(2).repeat_interleave(docs_per_topic)
    for d, t in enumerate(topics.tolist()):
        words = torch.randperm(words_per_topic, generator=g)[:words_per_doc] + t * words_per_topic
        dense[d, words] = torch.rand(words_per_doc, generator=g) + 0.1
    return torch.nn.functional.normalize(dense, dim=1).to_sparse_csr(), topics


def topic_separation(codes: torch.Tensor, topics: torch.Tensor) -> float:
    """Mean Hamming distance between topics minus within topics, as a fraction of the bits."""
    distance = (codes.unsqueeze(0) != codes.unsqueeze(1)).float().mean(-1)
    same = topics.unsqueeze(0) == topics.unsqueeze(1)
    return (distance[~same].mean() - distance[same].mean()).item()


def test_training_separates_two_topics():
    """Untrained, every document gets the same code; 15 epochs of Adam separate the topics. The layers
    learn in cascade (the upper ones only once the bottom one's features vary): measured over seeds 0-4,
    the top codes separate fully after 6-11 epochs."""
    x, topics = two_topic_corpus(docs_per_topic=60, words_per_topic=30, words_per_doc=8, seed=0)
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="srbm", bits=8, hidden=16), x.shape[1])
    before = topic_separation(model.encode(x), topics)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    generator = torch.Generator().manual_seed(0)
    dense = x.to_dense()
    for _ in range(15):
        for index in torch.randperm(x.shape[0], generator=generator).split(10):
            loss = model(dense[index].to_sparse_csr(), generator=generator)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = topic_separation(model.encode(x), topics)
    assert after > before + 0.5, (before, after)  # measured: 0.0 before, 0.98-1.0 after
