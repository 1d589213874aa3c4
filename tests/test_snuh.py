"""SNUH (models/snuh.py): its pairwise term against a hand computation, the low-rank composition against the
joint Gaussian's KL written out in full, its spanning trees, and the weighted pairing its training draws."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from corrhash.data.device_csr import DeviceCSR
from corrhash.models import ModelConfig, create_model
from corrhash.models.graph import symmetric_graph
from corrhash.models.snuh import GAMMA_BOUND, edge_kl, node_kl, spanning_tree_weights
from corrhash.train.neighbours import NeighbourPairs, NeighbourSource


def test_pairwise_kl_and_its_gradient_match_the_hand_computed_edge():
    """One bit, one edge: mu (0.6, 0.3), sigma (0.5, 0.8), gamma 0.4, tau 0.5. By hand, with squares
    0.36 + 0.09 + 0.25 + 0.64 = 1.34 and 2 tau (gamma sigma_i sigma_j + mu_i mu_j) = 0.34:
    0.5 [(1.34 - 0.34) / 0.75 - 1.34 + log 0.75 - log(1 - 0.16)] = -0.059998; its derivatives
    d/dmu_i = (mu_i - tau mu_j) / 0.75 - mu_i = 0, d/dmu_j = -0.3,
    d/dsigma_i = (sigma_i - tau gamma sigma_j) / 0.75 - sigma_i = -0.046667,
    d/dgamma = -tau sigma_i sigma_j / 0.75 + gamma / (1 - gamma^2) = 0.209524.
    (The authors' code writes log(1 - gamma): 0.5 [... - log 0.6] = -0.032753, which this is not.)"""
    mu_i, mu_j, sigma_i, sigma_j, gamma = (torch.tensor([[v]], dtype=torch.float64, requires_grad=True)
                                           for v in (0.6, 0.3, 0.5, 0.8, 0.4))
    value = edge_kl(mu_i, sigma_i, None, mu_j, sigma_j, None, gamma, tau=0.5)
    assert value.item() == pytest.approx(-0.059998, abs=1e-6)
    value.sum().backward()
    grads = [t.grad.item() for t in (mu_i, mu_j, sigma_i, gamma)]
    assert grads == pytest.approx([0.0, -0.3, -0.046667, 0.209524], abs=1e-6)


def _gaussian_kl(mean, cov, prior_cov):
    inverse = np.linalg.inv(prior_cov)
    return 0.5 * (np.trace(inverse @ cov) + mean @ inverse @ mean - len(mean)
                  + np.linalg.slogdet(prior_cov)[1] - np.linalg.slogdet(cov)[1])


@pytest.mark.parametrize("bound, sigma_low", [(0.9, 0.2), (GAMMA_BOUND, 1e-3)])
def test_the_correlated_composition_is_the_joint_gaussians_kl_written_in_full(bound, sigma_low):
    """corrsh-snuh: marginals N(mu, diag sigma^2 + UU^T), cross-covariance diag(gamma sigma_i sigma_j); the pairwise
    term must equal KL(q_ij || p_ij) - KL(q_i || p_i) - KL(q_j || p_j) with the 2m x 2m matrices formed and
    inverted by numpy, and the node term KL(q_i || N(0, I)); also with |gamma| at its bound and sigma small beside
    U, where a float32 Cholesky of the m x m Schur complement failed in training."""
    rng = np.random.default_rng(0)
    m, v, tau = 5, 2, 0.9
    mu_i, mu_j = rng.uniform(0, 1, m), rng.uniform(0, 1, m)
    sigma_i, sigma_j = rng.uniform(sigma_low, 1, m), rng.uniform(sigma_low, 1, m)
    u_i, u_j = rng.uniform(-0.5, 0.5, (m, v)), rng.uniform(-0.5, 0.5, (m, v))
    gamma = bound * np.sign(rng.uniform(-1, 1, m)) if bound == GAMMA_BOUND else rng.uniform(-bound, bound, m)
    s_i, s_j = np.diag(sigma_i ** 2) + u_i @ u_i.T, np.diag(sigma_j ** 2) + u_j @ u_j.T
    cross = np.diag(gamma * sigma_i * sigma_j)
    joint = np.block([[s_i, cross], [cross, s_j]])
    prior = np.block([[np.eye(m), tau * np.eye(m)], [tau * np.eye(m), np.eye(m)]])
    expected = (_gaussian_kl(np.concatenate([mu_i, mu_j]), joint, prior)
                - _gaussian_kl(mu_i, s_i, np.eye(m)) - _gaussian_kl(mu_j, s_j, np.eye(m)))
    t = [torch.from_numpy(a)[None] for a in (mu_i, sigma_i, u_i, mu_j, sigma_j, u_j, gamma)]
    assert edge_kl(*t, tau=tau).item() == pytest.approx(expected, rel=1e-7)
    single = [x.float().requires_grad_() for x in t]  # as training runs it: float32, with gradients
    value = edge_kl(*single, tau=tau)
    value.sum().backward()
    assert value.item() == pytest.approx(expected, rel=1e-3) and all(torch.isfinite(x.grad).all() for x in single)
    assert node_kl(t[0], t[1], t[2]).item() == pytest.approx(_gaussian_kl(mu_i, s_i, np.eye(m)), rel=1e-9)


def _random_graph(n=60, k=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    return symmetric_graph(ids, rng.uniform(0.05, 1.0, ids.shape))


def test_spanning_trees_are_forests_of_the_graph_and_cold_ones_are_its_maximum_tree():
    graph = _random_graph()
    two_parts = sp.block_diag([graph, _random_graph(seed=1)]).tocsr()  # two components: a forest of two trees
    for g in (graph, two_parts):
        weights = spanning_tree_weights(g, trees=7, temperature=0.5, seed=3)
        components = sp.csgraph.connected_components(g)[0]
        assert abs(weights - weights.T).max() == 0
        assert set(zip(*weights.nonzero())) <= set(zip(*g.nonzero()))  # tree edges are graph edges
        # each tree has n - components edges, so the weights (fractions of the trees) sum to that
        assert weights.sum() / 2 == pytest.approx(g.shape[0] - components)
        assert np.all(np.isin(np.round(weights.data * 7, 6), np.arange(1, 8)))
    cold = spanning_tree_weights(graph, trees=4, temperature=1e-6, seed=0)
    maximum = sp.csgraph.minimum_spanning_tree(-sp.triu(graph, 1)).tocsr()
    maximum = (maximum + maximum.T) != 0
    assert np.all(cold.data == 1.0) and (abs((cold != 0).astype(int) - maximum.astype(int))).nnz == 0
    assert (spanning_tree_weights(graph, 4, 0.5, seed=0) != spanning_tree_weights(graph, 4, 0.5, seed=1)).nnz > 0


def test_weighted_pairing_draws_neighbours_by_their_weights_and_scales_by_half_the_degree():
    """Document 0 has tree neighbours 1 (weight 0.75) and 2 (0.25): drawn 3:1, scale (0.75 + 0.25) / 2; a document
    without neighbours gets scale 0."""
    weights = sp.csr_matrix(np.array([[0, 0.75, 0.25, 0], [0.75, 0, 0, 0], [0.25, 0, 0, 0], [0, 0, 0, 0]]))
    rows = DeviceCSR(sp.csr_matrix(np.eye(4, dtype=np.float32)), torch.device("cpu"))
    pairs = NeighbourPairs(rows, NeighbourSource(weights), weighted=True)
    generator = torch.Generator().manual_seed(0)
    picked, has, scale = pairs.sample(torch.zeros(20_000, dtype=torch.int64), generator)
    assert has.all() and set(picked.tolist()) == {1, 2}
    assert (picked == 1).float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert torch.allclose(scale, torch.tensor(0.5))
    _, has, scale = pairs.sample(torch.tensor([1, 2, 3]), generator)
    assert has.tolist() == [True, True, False] and scale.tolist() == pytest.approx([0.375, 0.125, 0.0])
    x, neighbour, batch_scale = next(pairs.batches(torch.Generator().manual_seed(0), 4))
    assert x.shape == neighbour.shape == (4, 4) and batch_scale.shape == (4,)


@pytest.mark.parametrize("name", ["snuh", "corrsh-snuh"])
def test_snuh_codes_are_the_sign_of_the_mean_logit_and_the_pair_scale_weighs_the_edge_term(name):
    model = create_model(ModelConfig(name=name, bits=6, hidden=8, rank=2), 12)
    model.end_epoch()
    x = torch.rand(5, 12).to_sparse_csr()
    neighbours = torch.rand(5, 12).to_sparse_csr()
    one = model.loss(x, torch.Generator().manual_seed(0), neighbours, torch.ones(5))
    none = model.loss(x, torch.Generator().manual_seed(0), neighbours, torch.zeros(5))
    double = model.loss(x, torch.Generator().manual_seed(0), neighbours, torch.full((5,), 2.0))
    assert none["neighbour"].item() == 0.0 and double["neighbour"].item() == pytest.approx(2 * one["neighbour"].item())
    gap = (double["loss"] - one["loss"]).item()
    assert gap == pytest.approx((model.kl_weight * one["neighbour"]).item(), rel=1e-5, abs=1e-4)  # float32 sums
    model.eval()
    logits = model.posterior(x)[0]
    assert torch.equal(model.encode(x), logits > 0)


def test_snuhs_own_recipe_starts_every_job_and_flags_still_win(tmp_path, shards_synthetic):
    """SNUH's authors' recipe (HashModel.recipe: a fixed KL weight 0.05, batches of 128, 15 neighbours, 13 trees)
    comes after --recipe and before the flags: in a training job's configs, in each family's default recipe of a
    search over several models, and in an ablation's cells; other models keep the shared recipe."""
    from corrhash.ablate.grid import load_grid
    from corrhash.runs.space import default_recipes, model_spaces
    from corrhash.runs.spec import RunSpec, job_configs
    from test_grid import write

    model, train = job_configs("converge", "snuh", {})
    assert (model.beta, model.anneal_step, train.batch_size, model.neighbours, model.trees) == (0.05, 0.0, 128, 15, 13)
    model, train = job_configs("converge", "snuh", {"beta": 0.2})
    assert (model.beta, model.anneal_step, train.batch_size) == (0.2, 0.0, 128)  # over converge's step 0.05
    model, train = job_configs("converge", "nash-nbr", {})
    assert (model.beta, model.anneal_step, train.batch_size, model.neighbours) == (1.0, 0.05, 100, 25)
    spec = RunSpec(str(tmp_path), *job_configs("converge", "corrsh", {}))
    recipes = default_recipes(model_spaces(["nash", "snuh"], pinned={"lr": 2e-3}), spec)
    assert (recipes["snuh"]["beta"], recipes["snuh"]["lr"]) == (0.05, 2e-3)  # the flag pins lr for every family
    assert (recipes["nash"]["beta"], recipes["nash"]["lr"]) == (1.0, 2e-3)
    grid = load_grid(write(tmp_path, shards_synthetic, methods={"snuh": {}, "nash": {}}))
    betas = {cell.axes["method"]: (cell.model.beta, cell.train.lr) for cell in grid.cells}
    assert betas["snuh"] == (0.05, 1e-3) and betas["nash"][0] == 1.0


def test_an_ablation_cell_trains_snuh_through_the_lifecycle(shards_synthetic, tmp_path):
    """What a cell runs inside its Ray task: snuh at its own recipe, pairs along its trees, a model that loads."""
    import json

    import corrhash
    from corrhash.ablate.grid import load_grid
    from corrhash.runs.local import run_local
    from test_grid import write

    grid = load_grid(write(tmp_path, shards_synthetic, methods={"corrsh-snuh": {"neighbours": 6, "trees": 3}},
                           fixed={"epochs": 2, "hidden": 32, "eval_k": 20}))
    (cell,) = grid.cells
    results = run_local(cell.spec(), tmp_path / "cell")
    assert (results["model"]["beta"], results["model"]["anneal_step"], results["model"]["trees"]) == (0.05, 0.0, 3)
    assert results["val_precision"] > 0
    history = [json.loads(line) for line in (tmp_path / "cell" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["neighbour"] != 0 for h in history)
    assert corrhash.load(tmp_path / "cell" / "model").encode(["a text"]).shape == (1, 1)  # 8 bits packed
