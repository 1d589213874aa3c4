"""Each registered model's declared search space (timm-style: the model owns it): valid, and naming only what the
model uses; the conditional space over several models; the routing of a trial's values; the named errors."""

from __future__ import annotations

import optuna
import pytest
import torch

from corrhash.data import TfidfShards
from corrhash.data.device_csr import DeviceCSR
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig, create_model, list_models, model_class, searchable
from corrhash.models.space import LOOP_SPACE, NEIGHBOUR_SPACE, parse_spec
from corrhash.report.page import Trial, model_progress
from corrhash.runs.space import ConditionalSpace, check_space, default_recipes, model_names, model_spaces
from corrhash.runs.spec import RunSpec, trial_values
from corrhash.train import TrainConfig
from corrhash.train.loop import fit

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
BASE = dict(bits=8, hidden=16, rank=2, mixture=2, components=2)


@pytest.fixture(scope="module")
def splits(shards_synthetic):
    shards = TfidfShards(shards_synthetic)
    return shards.split("train"), shards.split("val")


def two_values(name: str, dim: str) -> tuple:
    """Two distinct values the model's space (or, for `also_searchable`, a sensible pair) can take."""
    spec = model_class(name).search_space.get(dim)
    if spec is None:
        return {"hidden": (16, 24), "energy_terms": (False, True), "encoder": ("linear", "mlp")}[dim]
    values = parse_spec(dim, spec).drawable()
    return values[0], values[1] if len(values) > 1 else values[0]


def model_outcome(name: str, config: ModelConfig, splits) -> list[torch.Tensor]:
    """What a model dimension can change: the weights' shapes, and the training loss on one batch with fixed noise
    after 1 and after 2,000 annealing epochs (both ends of the schedule), or a closed-form fit's embeddings."""
    train, _ = splits
    torch.manual_seed(0)
    model = create_model(config, train.n_features)
    x = DeviceCSR(train.features, torch.device("cpu")).range(0, 40)
    if not model.trainable:
        model.fit_closed_form(train.features)
        return [model.embed(x)]
    out = [torch.tensor([p.numel() for p in model.state_dict().values()], dtype=torch.float64)]
    for epochs in (1, 2000):
        while int(model.epochs_done) < epochs:
            model.end_epoch()
        model.train()
        out.append(model.loss(x, torch.Generator().manual_seed(1))["loss"].detach())
    return out


def differs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a, b))


GRAPH_DIMENSIONS = set(NEIGHBOUR_SPACE) | {"trees", "tree_temperature", "code_temperature"}
"""Dimensions that change what training does (the pairs it draws along the graph, SNUH's trees; SNUH's code
temperature, whose initial mean head is scaled to give one function at any T), not the model at its start."""
CASES = [(name, dim) for name in list_models() for dim in sorted(searchable(name))]


@pytest.mark.parametrize("name, dim", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_every_dimension_a_model_declares_changes_what_it_learns(name, dim, splits):
    """A declared dimension is one the model uses: two of its values give a different model (model fields) or a
    different training run (the loop's fields, for trained models only)."""
    low, high = two_values(name, dim)
    assert low != high
    train, val = splits
    if dim in TrainConfig.__dataclass_fields__:
        assert model_class(name).trainable, f"{name} fits in closed form: the loop's {dim} means nothing to it"
        runs = [fit(ModelConfig(name=name, **BASE), TrainConfig(**{"epochs": 1, "batch_size": 40, "seed": 0, dim: v}),
                    train, val=val) for v in (low, high)]
        assert differs([*runs[0].model.state_dict().values()], [*runs[1].model.state_dict().values()]), dim
    elif dim in GRAPH_DIMENSIONS and model_class(name).uses_neighbours:  # the graph enters through fit's batches
        # anneal_step 0: SNUH's pairwise terms are part of its KL, whose weight is 0 in an annealed first epoch
        runs = [fit(ModelConfig(name=name, **{**BASE, dim: v, "anneal_step": 0.0}),
                    TrainConfig(epochs=1, batch_size=40, seed=0), train, val=val) for v in (low, high)]
        assert differs([*runs[0].model.state_dict().values()], [*runs[1].model.state_dict().values()]), dim
    else:
        outcomes = [model_outcome(name, ModelConfig(name=name, **{**BASE, dim: v}), splits) for v in (low, high)]
        assert differs(*outcomes), f"{name} does not use {dim}: {low!r} and {high!r} give the same model"


@pytest.mark.parametrize("name", list_models())
def test_each_models_space_is_valid_and_shaped_by_what_it_is(name, tmp_path):
    cls = model_class(name)
    spec = RunSpec(str(tmp_path), ModelConfig(name=name), TrainConfig())
    check_space(model_spaces([name]), spec)  # every drawable value makes a valid config of the right type
    if cls.trainable:
        assert set(LOOP_SPACE) <= set(cls.search_space)
    else:
        assert not set(cls.search_space) & set(TrainConfig.__dataclass_fields__)
    assert {"sph": {}, "lsh": {}}.get(name, cls.search_space) == cls.search_space
    assert set(model_class("sth").search_space) == {"neighbours", "svm_c"}


def test_conditional_space_draws_the_model_then_only_its_own_dimensions(tmp_path):
    spaces = model_spaces(["corrsh", "nash", "sth"], pinned={"dropout": 0.1})
    spec = RunSpec(str(tmp_path), ModelConfig(), TrainConfig())
    check_space(spaces, spec)
    space = ConditionalSpace(spaces)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        constants = space(trial)  # suggests first: trial.params holds the draws only after
        config = {**trial.params, **constants}
        model = config["model"]
        seen.add(model)
        assert {key.partition(".")[0] for key in config if key not in ("model", "budget")} == {model}
        assert {key.partition(".")[2] for key in config if key not in ("model", "budget")} == set(spaces[model])
        assert config["budget"] in ("start-up", "leader default", "search")  # the trial's kind, not a field
        trained = spec.with_trial(config)
        assert trained.model.name == model
        if model != "sth":
            assert config[f"{model}.dropout"] == 0.1 and trained.model.dropout == 0.1  # pinned: a constant
        study.tell(trial, 0.5)
    assert seen == {"corrsh", "nash", "sth"}
    one = ConditionalSpace(model_spaces(["corrsh"]))
    trial = study.ask()
    constants = one(trial)
    config = {**trial.params, **constants}
    assert "model" not in config and "rank" in config  # one model: plain names, as a tune always had


def test_trial_values_route_a_trials_config():
    assert trial_values({"model": "corrsh", "corrsh.rank": 3, "corrsh.lr": 0.01}) == {"name": "corrsh", "rank": 3,
                                                                                      "lr": 0.01}
    assert trial_values({"rank": 3}) == {"rank": 3}
    with pytest.raises(ConfigError, match="belongs to model 'nash'"):
        trial_values({"model": "corrsh", "nash.lr": 0.01})


def test_space_overrides_and_their_named_errors():
    spaces = model_spaces(["corrsh", "nash"], overrides=["lr=loguniform:1e-3:2e-3", "corrsh.rank=choice:0,4"])
    assert spaces["corrsh"]["lr"] == spaces["nash"]["lr"] == "loguniform:1e-3:2e-3"
    assert spaces["corrsh"]["rank"] == "choice:0,4" and "rank" not in spaces["nash"]
    assert model_spaces(["nash", "sth"], overrides=["neighbours=randint:5:9"])["sth"]["neighbours"] == "randint:5:9"
    assert model_names("all") == list_models() and model_names("sth, nash") == ["sth", "nash"]
    for call, message in [(lambda: model_names("corrsh,bogus"), "unknown model.*bogus"),
                          (lambda: model_names("nash,nash"), "named twice"),
                          (lambda: model_spaces(["nash"], overrides=["rank=randint:0:4"]), "nash does not use 'rank'"),
                          (lambda: model_spaces(["sph", "lsh"], overrides=["lr=choice:0.1"]), "no searched model"),
                          (lambda: model_spaces(["nash"], overrides=["corrsh.rank=randint:0:4"]), "not a searched"),
                          (lambda: model_spaces(["nash"], overrides=["lr"]), "NAME=SPEC"),
                          (lambda: parse_spec("lr", "loguniform:0:1"), "LOW > 0"),
                          (lambda: parse_spec("lr", "normal:0:1"), "unknown kind")]:
        with pytest.raises(ConfigError, match=message):
            call()


def test_model_progress_is_each_models_best_so_far_against_trials_and_epochs():
    trials = [Trial("a", "1", "FINISHED", {}, 0.5, 10, model="nash"),
              Trial("b", "2", "FINISHED", {}, 0.7, 0, model="sth"),     # a closed-form fit counts one epoch
              Trial("c", "3", "FINISHED", {}, 0.4, 30, model="nash"),   # worse: nash's best so far stays 0.5
              Trial("d", "4", "FAILED", {}, None, 2, model="nash"),     # no score: spends, adds no point
              Trial("e", "5", "FINISHED", {}, 0.6, 5, model="nash")]
    assert model_progress(trials) == {"nash": [(1, 10, 0.5), (3, 41, 0.5), (5, 48, 0.6)], "sth": [(2, 11, 0.7)]}


def test_a_search_over_families_runs_each_default_on_a_short_rung_then_spends_on_the_leaders(tmp_path):
    """The budget rule (runs/space.BUDGET_RULE) on a small synthetic study: four families whose trials score
    nash 0.5, corrsh 0.7, bmsh 0.6, sth 0.3 (+ what TPE draws cannot change). Trials 0-3 are the start-up rung, one
    per family in the order given, at each family's default recipe and the rung's 5 epochs; the two leaders (corrsh,
    bmsh) then run their default recipe at the full epochs, then the search's trials alternate between them with
    drawn dimensions. A start-up trial still running counts as started: the next trial goes to the next family."""
    models = ["nash", "corrsh", "bmsh", "sth"]
    spaces = model_spaces(models)
    spec = RunSpec(str(tmp_path), ModelConfig(dropout=0.15), TrainConfig(epochs=40, lr=2e-3))
    recipes = default_recipes(spaces, spec)
    space = ConditionalSpace(spaces, recipes, rung_epochs=5, leaders=2)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    score = {"nash": 0.5, "corrsh": 0.7, "bmsh": 0.6, "sth": 0.3}
    ran = []
    pending = study.ask()
    first = space(pending)  # running while the next is asked
    for _ in range(11):
        trial = study.ask()
        constants = space(trial)
        config = {**trial.params, **constants}
        ran.append((config["model"], trial.user_attrs["kind"], config.get("epochs"), sorted(trial.params)))
        assert spec.with_trial(config).model.name == config["model"]
        if trial.user_attrs["kind"] != "search":
            assert config == {"model": config["model"], "budget": trial.user_attrs["kind"],
                              **({"epochs": 5} if config.get("epochs") else {}),
                              **{f"{config['model']}.{dim}": value for dim, value in recipes[config["model"]].items()}}
        study.tell(trial, score[config["model"]])
    study.tell(pending, score[first["model"]])
    assert first["model"] == "nash" and first["epochs"] == 5
    assert [(m, kind, epochs) for m, kind, epochs, _ in ran[:5]] == [
        ("corrsh", "start-up", 5), ("bmsh", "start-up", 5), ("sth", "start-up", 5),
        ("corrsh", "leader default", None), ("bmsh", "leader default", None)]
    assert [m for m, *_ in ran[5:]] == ["corrsh", "bmsh"] * 3
    assert all(kind == "search" and epochs is None and params for _, kind, epochs, params in ran[5:])
    assert recipes["corrsh"]["dropout"] == 0.15 and recipes["corrsh"]["lr"] == 2e-3 and recipes["corrsh"]["rank"] == 10


def test_asha_never_stops_a_leader_default_but_stops_a_weak_search_trial():
    """BUDGET_RULE promises each leader's default recipe its full --epochs: at a rung where ASHA (reduction 4) stops
    a weak search trial, a leader-default trial with the same weak value goes on; both values are recorded."""
    from ray.tune.experiment import Trial as TuneTrial
    from ray.tune.schedulers import TrialScheduler

    from corrhash.runs.scheduler import LeaderSafeASHA

    asha = LeaderSafeASHA(time_attr="epoch", metric="val_precision", mode="max", max_t=3, grace_period=1)
    trials = {name: TuneTrial("trainable", config={"model": "nash", "budget": kind}, stub=True)
              for name, kind in [("strong", "start-up"), ("strong2", "start-up"), ("leader", "leader default"),
                                 ("search", "search")]}
    for trial in trials.values():
        asha.on_trial_add(None, trial)
    decisions = {name: asha.on_trial_result(None, trial, {"epoch": 1, "val_precision": value})
                 for (name, trial), value in zip(trials.items(), [0.6, 0.6, 0.2, 0.2])}
    assert decisions == {"strong": TrialScheduler.CONTINUE, "strong2": TrialScheduler.CONTINUE,
                         "leader": TrialScheduler.CONTINUE, "search": TrialScheduler.STOP}
    assert asha.on_trial_result(None, trials["leader"], {"epoch": 3, "val_precision": 0.2}) == TrialScheduler.STOP
