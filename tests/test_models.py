"""Contract and correctness tests for corrhash.models (CPU, small random corpora)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from corrhash.data.device_csr import DeviceCSR
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig, SparseLinear, create_model, list_models
from corrhash.models.config import DEFAULT_ANNEAL_STEP

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

N_DOCS, N_FEATURES, WORDS_PER_DOC = 64, 300, 20


def random_csr_batch(n_docs: int, n_features: int, words_per_doc: int, seed: int = 0) -> torch.Tensor:
    """L2-normalised TF-IDF-like rows with `words_per_doc` distinct sorted words each."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.randperm(n_features, generator=g)[:words_per_doc] for _ in range(n_docs)])
    cols = cols.sort(dim=1).values
    values = torch.rand(n_docs, words_per_doc, generator=g) + 0.1
    values = values / values.norm(dim=1, keepdim=True)
    crow = torch.arange(0, (n_docs + 1) * words_per_doc, words_per_doc)
    return torch.sparse_csr_tensor(
        crow, cols.reshape(-1), values.reshape(-1), (n_docs, n_features), check_invariants=True
    )


def small_config(name: str, **overrides) -> ModelConfig:
    values = dict(name=name, bits=16, hidden=32, rank=3, mixture=4, dropout=0.2)
    values.update(overrides)
    return ModelConfig(**values)


TRAINABLE = [name for name in list_models() if create_model(ModelConfig(name=name, bits=8, hidden=4), 10).trainable]


@pytest.fixture(scope="module")
def x_csr() -> torch.Tensor:
    return random_csr_batch(N_DOCS, N_FEATURES, WORDS_PER_DOC)


# ---- registry and config ------------------------------------------------------------


def test_registry_lists_all_models_and_rejects_unknown():
    assert list_models() == ["bmsh", "bmsh-nbr", "corrsh", "corrsh-mixture", "corrsh-mixture-nbr", "corrsh-nbr", "corrsh-snuh", "lsh",
                             "nash", "nash-nbr", "snuh", "sph", "srbm", "sth", "vdsh"]
    with pytest.raises(ConfigError, match="bmsh, bmsh-nbr, corrsh, .*, sth, vdsh"):
        create_model(ModelConfig(name="nope"), N_FEATURES)


def test_config_round_trips_and_rejects_unknown_keys():
    config = ModelConfig(name="nash", bits=32, anneal_step=0.01)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="bitz.*colour|colour.*bitz"):
        ModelConfig.from_dict({"bits": 8, "bitz": 8, "colour": "red"})
    with pytest.raises(ConfigError, match="mixture"):
        ModelConfig(mixture=0)


def test_sparse_linear_matches_dense_and_gets_gradients(x_csr):
    layer = SparseLinear(N_FEATURES, 7)
    out_sparse = layer(x_csr)
    (out_sparse**2).sum().backward()
    grad_sparse = layer.weight.grad.clone()
    layer.weight.grad = None
    out_dense = layer(x_csr.to_dense())
    (out_dense**2).sum().backward()
    torch.testing.assert_close(out_sparse, out_dense)
    torch.testing.assert_close(grad_sparse, layer.weight.grad)
    assert grad_sparse.abs().sum() > 0


# ---- contract shared by every registered model --------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name, x_csr, tmp_path):
    config = small_config(name)
    model = create_model(config, N_FEATURES)
    if model.trainable:
        model.end_epoch()  # non-zero KL weight so the KL path is in the gradient too
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        # a -nbr model's batch comes with one neighbour row per document: here the batch reversed
        neighbours = x_csr.to_dense().flip(0).to_sparse_csr() if model.uses_neighbours else None
        for _ in range(5):
            optimizer.zero_grad()
            out = model.loss(x_csr, generator=generator, neighbours=neighbours)
            assert set(out) == {"loss", "recon", "kl"} | ({"neighbour"} if model.uses_neighbours else set())
            for key, value in out.items():
                assert value.dim() == 0 and torch.isfinite(value), key
            out["loss"].backward()
            for pname, param in model.named_parameters():
                if param.requires_grad:
                    assert param.grad is not None, pname
                    assert torch.isfinite(param.grad).all(), pname
                    assert param.grad.abs().sum() > 0, pname
            optimizer.step()
        # with reconstruction terms alone, a few hundred words of log-prob per doc
        assert 0 < out["recon"].item() < WORDS_PER_DOC * math.log(N_FEATURES) * 2
    else:
        assert not any(p.requires_grad for p in model.parameters())
        with pytest.raises(RuntimeError, match="not trainable"):
            model.loss(x_csr)

    model.eval()
    model.calibrate(model.embed(x_csr))
    codes = model.encode(x_csr)
    assert codes.dtype == torch.bool and codes.shape == (N_DOCS, config.bits)
    torch.testing.assert_close(codes, model.embed(x_csr) > model.thresholds)

    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    restored = create_model(config, N_FEATURES)
    restored.load_state_dict(load_file(str(path)))
    restored.eval()
    assert torch.equal(restored.encode(x_csr), codes)
    assert torch.equal(restored.kl_weight, model.kl_weight)
    assert torch.equal(restored.thresholds, model.thresholds)


@pytest.mark.parametrize("name", TRAINABLE)
def test_dense_and_csr_inputs_give_the_same_loss(name, x_csr):
    model = create_model(small_config(name), N_FEATURES)
    out_csr = model.loss(x_csr, generator=torch.Generator().manual_seed(3))
    out_dense = model.loss(x_csr.to_dense(), generator=torch.Generator().manual_seed(3))
    for key in out_csr:
        torch.testing.assert_close(out_csr[key], out_dense[key])


@pytest.mark.parametrize("name", TRAINABLE)
def test_same_seed_gives_same_loss(name, x_csr):
    torch.manual_seed(0)
    model = create_model(small_config(name), N_FEATURES)

    def loss_with(seed):
        return model.loss(x_csr, generator=torch.Generator().manual_seed(seed))["loss"]

    assert torch.equal(loss_with(7), loss_with(7))
    assert not torch.equal(loss_with(7), loss_with(8))


# ---- annealing ----------------------------------------------------------------------


@pytest.mark.parametrize("rank,mixture", [(10, 10), (3, 4), (0, 1)])
def test_corrsh_annealing_schedule(rank, mixture):
    model = create_model(small_config("corrsh", rank=rank, mixture=mixture, noise_floor=0.05), 20)
    step = 1.0 / (50 * rank + 50 * mixture)
    assert model.anneal_step == pytest.approx(step)
    assert model.kl_weight.item() == 0.0 and model.noise_scale.item() == 1.0
    for n in range(1, int(1.2 / step) + 2):
        model.end_epoch()
        assert model.kl_weight.item() == pytest.approx(min(1.0, n * step), abs=1e-6)
        assert model.noise_scale.item() == pytest.approx(max(0.05, 1.0 - n * step), abs=1e-6)
    assert model.kl_weight.item() == 1.0
    assert model.noise_scale.item() == pytest.approx(0.05)


def test_anneal_step_defaults_and_override():
    assert create_model(small_config("nash"), 20).anneal_step == DEFAULT_ANNEAL_STEP == 1 / 1000
    model = create_model(small_config("vdsh", anneal_step=0.25), 20)
    for _ in range(3):
        model.end_epoch()
    assert model.kl_weight.item() == pytest.approx(0.75)
    assert model.noise_scale.item() == pytest.approx(0.25)


# ---- CorrSH against an independent float64 reference --------------------------------


def reference_corrsh(model, x_dense: torch.Tensor, noise: dict) -> dict[str, torch.Tensor]:
    """The CorrSH bound written out directly: explicit softplus/softmax, explicit
    Bernoulli products for h_k(s~), explicit m x m covariance for the energies."""
    p = {k: v.detach().double() for k, v in model.named_parameters()}
    n = {k: v.double() if v.is_floating_point() else v for k, v in noise.items()}
    x = x_dense.double()
    m, v, k = model.bits, model.rank, model.mixture
    docs = x.shape[0]

    h = torch.relu(x @ p["encoder.input.weight"] + p["encoder.input.bias"]) * n["dropout"][0]
    h = torch.relu(h @ p["encoder.hidden.weight"].T + p["encoder.hidden.bias"]) * n["dropout"][1]
    mu = h @ p["mean_head.weight"].T + p["mean_head.bias"]
    sigma = torch.log(1 + torch.exp(h @ p["scale_head.weight"].T + p["scale_head.bias"]))
    if v:
        u = torch.tanh(h @ p["rank_head.weight"].T + p["rank_head.bias"]).reshape(docs, m, v) / v
    else:
        u = torch.zeros(docs, m, 0, dtype=torch.float64)

    r = torch.stack([mu + sigma * n["eps_diag"][j] + (u @ n["eps_rank"][j].unsqueeze(-1)).squeeze(-1)
                     for j in range(k + 1)])
    prob = 1 / (1 + torch.exp(-r))
    s = (n["uniform"][0] < prob[0]).double()
    logits = (s + model.noise_scale.double() * n["decoder"]) @ p["decoder.output.weight"].T
    logits = logits + p["decoder.output.bias"]
    log_softmax = logits - torch.log(torch.exp(logits).sum(dim=1, keepdim=True))
    recon = -(log_softmax * (x > 0)).sum(dim=1)

    chosen = prob[1:][n["component"], torch.arange(docs)]
    s_tilde = (n["uniform"][1] < chosen).double()
    component_probs = (prob[1:] ** s_tilde * (1 - prob[1:]) ** (1 - s_tilde)).prod(dim=-1)  # [k, docs]
    h_k = component_probs.mean(dim=0)
    kl = torch.log(h_k) - torch.log(torch.tensor(0.5, dtype=torch.float64)) * m
    if model.energy_terms:
        cov = torch.diag_embed(sigma**2) + u @ u.transpose(1, 2)

        def energy(b):
            return -0.5 * torch.einsum("bi,bij,bj->b", b, cov, b) - (mu * b).sum(-1)

        kl = kl + energy(s_tilde) - energy(s)
    weight = model.kl_weight.double()
    return {"loss": (recon + weight * kl).mean(), "recon": recon.mean(), "kl": kl.mean()}


@pytest.mark.parametrize("energy_terms", [False, True])
@pytest.mark.parametrize("rank,mixture", [(3, 4), (0, 1), (10, 10)])
def test_corrsh_loss_matches_float64_reference(x_csr, energy_terms, rank, mixture):
    torch.manual_seed(1)
    config = small_config("corrsh", rank=rank, mixture=mixture, energy_terms=energy_terms)
    model = create_model(config, N_FEATURES)
    model.kl_weight.fill_(0.7)
    model.noise_scale.fill_(0.6)
    noise = model.sample_noise(N_DOCS, x_csr.device, torch.Generator().manual_seed(5))
    got = model.loss_from_noise(x_csr, noise)
    want = reference_corrsh(model, x_csr.to_dense(), noise)
    for key in ("recon", "kl", "loss"):
        torch.testing.assert_close(got[key].double(), want[key], rtol=1e-5, atol=1e-5, msg=key)
    # loss() is exactly sample_noise() + loss_from_noise() with the same generator
    again = model.loss(x_csr, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again["loss"], got["loss"])


def test_corrsh_rank0_mixture1_runs_and_codes_are_mean_sign(x_csr):
    model = create_model(small_config("corrsh", rank=0, mixture=1), N_FEATURES)
    assert model.rank_head is None
    model.end_epoch()
    out = model.loss(x_csr, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    model.eval()
    with torch.no_grad():
        mu, _, _ = model.posterior(x_csr)
    assert torch.equal(model.encode(x_csr), mu > 0)


def test_embed_ignores_dropout_and_training_mode(x_csr):
    model = create_model(small_config("corrsh", dropout=0.5), N_FEATURES)
    model.train()
    first = model.embed(x_csr)
    assert torch.equal(first, model.embed(x_csr))
    model.eval()
    assert torch.equal(first, model.embed(x_csr))


def test_vdsh_calibrate_sets_per_bit_median(x_csr):
    model = create_model(small_config("vdsh"), N_FEATURES)
    train = model.embed(x_csr)
    model.calibrate(train)
    assert torch.equal(model.thresholds, train.median(dim=0).values)
    balance = model.encode(x_csr).float().mean(dim=0)
    assert ((balance > 0.4) & (balance < 0.6)).all()


def test_lsh_projection_is_seeded():
    x = random_csr_batch(8, 50, 5)
    a = create_model(ModelConfig(name="lsh", bits=16, seed=1), 50)
    b = create_model(ModelConfig(name="lsh", bits=16, seed=1), 50)
    c = create_model(ModelConfig(name="lsh", bits=16, seed=2), 50)
    assert torch.equal(a.encode(x), b.encode(x))
    assert not torch.equal(a.projection, c.projection)
    torch.testing.assert_close(a.embed(x), x.to_dense() @ a.projection)


# ---- sparse input is never densified ------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_huge_sparse_batch_is_never_densified(name):
    """A 200k x 2M float32 batch would need 1.6 TB dense; sparse it is ~1M non-zeros,
    so any densification of the input would fail or take far longer than allowed."""
    docs, features, per_doc = 200_000, 2_000_000, 5
    stride = features // per_doc
    cols = (torch.arange(docs).unsqueeze(1) * 7919 + torch.arange(per_doc) * stride) % features
    cols = cols.sort(dim=1).values.reshape(-1)
    values = torch.full((docs * per_doc,), 1 / math.sqrt(per_doc))
    crow = torch.arange(0, (docs + 1) * per_doc, per_doc)
    x = torch.sparse_csr_tensor(crow, cols, values, (docs, features), check_invariants=True)

    model = create_model(ModelConfig(name=name, bits=8, hidden=4, rank=2, mixture=2), features)
    start = time.perf_counter()
    codes = model.encode(x)
    assert codes.shape == (docs, 8)
    if model.trainable:
        # the decoder's [B, V] softmax is inherent, so only a few documents go through loss()
        few = torch.sparse_csr_tensor(
            crow[:5], cols[: per_doc * 4], values[: per_doc * 4], (4, features), check_invariants=True
        )
        out = model.loss(few, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    assert time.perf_counter() - start < 30


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list_models())
def test_runs_on_cuda_with_device_generator(name, x_csr):
    model = create_model(small_config(name), N_FEATURES).cuda()
    x = x_csr.cuda()
    if model.trainable:
        out = model.loss(x, generator=torch.Generator(device="cuda").manual_seed(0))
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    model.calibrate(model.embed(x))
    codes = model.encode(x)
    assert codes.is_cuda and codes.dtype == torch.bool
    cpu_model = create_model(small_config(name), N_FEATURES)
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    torch.testing.assert_close(cpu_model.embed(x_csr), model.embed(x).cpu(), rtol=1e-4, atol=1e-5)


# ---- learning on the synthetic shards (no raw corpus needed) ------------------------


def _val_precision(model, train, val, k: int = 20) -> float:
    from corrhash.retrieval import pack_codes, precision_at_k

    with torch.no_grad():
        model.eval()
        database = DeviceCSR(train.features, torch.device("cpu")).range(0, len(train))
        model.calibrate(model.embed(database))
        codes = [pack_codes(model.encode(DeviceCSR(s.features, torch.device("cpu")).range(0, len(s))))
                 for s in (val, train)]
    return precision_at_k(codes[0], val.labels, codes[1], train.labels, k=k, backend="faiss").tie_aware


@pytest.mark.parametrize("name", ["corrsh", "nash", "vdsh"])
def test_models_learn_the_synthetic_topics(name, shards_synthetic):
    """15 epochs of plain Adam on the synthetic shards lift val precision@20 well above the untrained codes'."""
    from corrhash.data import TfidfShards

    shards = TfidfShards(shards_synthetic)
    train, val = shards.split("train"), shards.split("val")
    rows = DeviceCSR(train.features, torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, bits=16, hidden=64, rank=4, mixture=4), train.features.shape[1])
    before = _val_precision(model, train, val)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):
        model.train()
        for index in torch.randperm(len(rows), generator=generator).split(32):
            loss = model(rows.rows(index), generator=generator)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.end_epoch()
    after = _val_precision(model, train, val)
    assert after > max(0.8, before + 0.3), (before, after)  # measured: 0.29-0.53 before, 0.91-0.98 after


@pytest.mark.parametrize("name", list_models())
def test_the_meta_device_build_has_the_real_shapes(name):
    """artifact.load_model checks a model.json's sizes against the weights file on a meta-device build, which
    allocates nothing: its shapes must be the real model's."""
    config = ModelConfig(name=name, bits=16, hidden=32)
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in create_model(config, 50).state_dict().items()}
    assert shapes == {key: tuple(t.shape) for key, t in create_model(config, 50).state_dict().items()}
