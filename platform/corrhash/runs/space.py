"""The search space of a tune: each model's own default space (`HashModel.search_space`), overridable from YAML or
`name=kind:args` strings and pinned by the job's own flags (`--dropout 0.1`), for one model or several at once.

Over several models the space is conditional and define-by-run (`ConditionalSpace`): Optuna first picks the model
(the `model` dimension), then only that model's dimensions, named `MODEL.DIM` so each model's values are modelled
apart (`corrsh.rank`, `nash.lr`). Over one model the dimensions keep their plain names (`lr`), as they always had.
The spec grammar lives in `corrhash.models.space`; specs stay strings (logged as the tune's params) until a trial
asks for its values.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from corrhash.errors import ConfigError, CorrhashError
from corrhash.models import list_models, model_class, searchable
from corrhash.models.space import parse_spec
from corrhash.runs.spec import BUDGET_KIND, RunSpec

TUNABLE = tuple(sorted(set().union(*(searchable(name) for name in list_models()))))
"""Every field some registered model lets a search vary."""
MODEL_DIMENSION = "model"
LEADER_DEFAULT = "leader default"


def model_names(text: str) -> list[str]:
    """`--models corrsh,nash` or `all` as registered names, in the order given; a named error for an unknown one."""
    names = list_models() if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--models {text!r}: name one or more models, comma-separated, or 'all'")
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--models {text!r}: a model is named twice")
    return names


def _chosen(yaml_file: Path | None, overrides: list[str] | None) -> dict:
    chosen = {}
    if yaml_file is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{yaml_file}: cannot read search space ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_file}: expected a mapping of parameter: spec")
        chosen.update({str(k): v for k, v in loaded.items()})
    for item in overrides or []:
        name, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"--space {item!r}: expected NAME=SPEC, e.g. lr=loguniform:1e-4:1e-2")
        chosen[name.strip()] = spec.strip()
    return chosen


def model_spaces(models: list[str], yaml_file: Path | None = None, overrides: list[str] | None = None,
                 pinned: dict | None = None) -> dict[str, dict]:
    """{model: {dimension: spec}}: each model's declared space, then the YAML file, then `--space NAME=SPEC`
    (NAME may be `MODEL.DIM` to change one model's dimension; a plain DIM changes it for every model that uses it),
    then the job's flags (`pinned`, e.g. {"dropout": 0.1} for --dropout 0.1), which fix that dimension wherever a
    model's space has it. A dimension no searched model uses is a named error."""
    spaces = {name: dict(model_class(name).search_space) for name in models}
    chosen = _chosen(yaml_file, overrides)
    for key, spec in chosen.items():
        owner, dot, dim = key.rpartition(".")
        # One model: a dimension it lacks is named as its own. Several: a plain DIM goes to those that use it.
        targets = [owner] if dot else list(models) if len(models) == 1 else [m for m in models if dim in searchable(m)]
        if dot and owner not in models:
            raise ConfigError(f"search space {key}: {owner!r} is not a searched model ({', '.join(models)})")
        for model in targets:
            if dim not in searchable(model):
                raise ConfigError(f"search space {key}: {model} does not use {dim!r}; it can search "
                                  f"{', '.join(sorted(searchable(model))) or 'nothing'}")
        if not targets:
            uses = "; ".join(f"{m}: {', '.join(sorted(searchable(m))) or 'nothing'}" for m in models)
            raise ConfigError(f"search space {key}: no searched model uses {dim!r} ({uses})")
        for model in targets:
            spaces[model][dim] = spec
    for name, value in (pinned or {}).items():
        clash = [key for key in chosen if key.rpartition(".")[2] == name]
        if clash:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value} and the search space's {clash[0]}={chosen[clash[0]]!r}: give one")
        for model in models:
            if name in spaces[model]:
                spaces[model][name] = value
    return spaces


def space_params(spaces: dict[str, dict]) -> dict:
    """What a tune logs as its `space`: {dim: spec} for one model (as always), {model: {dim: spec}} for several."""
    return next(iter(spaces.values())) if len(spaces) == 1 else spaces


BUDGET_RULE = """Over several models (--models) the budget goes where it pays, in three kinds of trial:
  1. start-up: each model once, in the order given, at its default recipe (the job's configs: the dataclasses'
     defaults, the recipe, the flags), for --grace-period epochs only: a cheap, equal first rung that ranks the
     families on what each gives untuned, never on one unlucky random draw;
  2. leader default: the --leaders best families by that rung (best val p@k of their finished trials), each once
     at its default recipe for the full --epochs, so the search ends at least as good as the best of them
     untuned (ASHA never stops these);
  3. search: every later trial goes to the leader with the fewest trials so far (the ranking redone as trials
     finish), and TPE draws its dimensions from that family's own earlier trials; ASHA stops weak ones.
With --num-samples below the number of models, the start-up rung covers the first models only."""
"""How a search over several models spends its trials (ConditionalSpace); said in `tune --help` and logged as the
parent run's `budget_rule` tag."""


def default_recipes(spaces: dict[str, dict], spec: RunSpec) -> dict[str, dict]:
    """{model: {dim: value}}: each searched dimension at that model's default recipe: a value the job fixed (a flag,
    a fixed spec), else the model's own recipe's (`HashModel.recipe`), else the job's configs'."""
    recipes = {}
    for model, specs in spaces.items():
        base, own = spec.with_overrides({"name": model}), model_class(model).recipe
        recipes[model] = {}
        for dim, text in specs.items():
            parsed = parse_spec(dim, text)
            recipes[model][dim] = (parsed.values[0] if parsed.kind == "fixed" else own[dim] if dim in own
                                   else getattr(base.model if hasattr(base.model, dim) else base.train, dim))
    return recipes


class ConditionalSpace:
    """Optuna's define-by-run space over `spaces` ({model: {dim: spec}}), for `OptunaSearch(space=...)`. One model:
    its dimensions, drawn by the sampler. Several: the trial's model and kind by BUDGET_RULE (`recipes`: each
    model's default recipe, `rung_epochs`: the start-up rung's epochs, `leaders`), recorded as the trial's user
    attributes `model` and `kind`, then its dimensions (a default recipe's as constants). Fixed specs come back as
    constants. A class, not a closure: Tune pickles its searcher, and this with it, to resume a search."""

    def __init__(self, spaces: dict[str, dict], recipes: dict[str, dict] | None = None,
                 rung_epochs: int | None = None, leaders: int = 3):
        self.spaces, self.recipes, self.rung_epochs, self.leaders = spaces, recipes, rung_epochs, leaders

    def key(self, model: str, dim: str) -> str:
        return dim if len(self.spaces) == 1 else f"{model}.{dim}"

    def budget(self, trial) -> tuple[str, str]:
        """(model, kind) of a trial of a search over several models, from the study's earlier trials."""
        import optuna

        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number
                   and t.user_attrs.get(MODEL_DIMENSION) in self.spaces]
        runs = {model: [t for t in earlier if t.user_attrs[MODEL_DIMENSION] == model] for model in self.spaces}
        untried = [model for model, trials in runs.items() if not trials]
        if untried:
            return untried[0], "start-up"
        best = {model: max((t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                            and t.value is not None), default=float("-inf")) for model, trials in runs.items()}
        order = list(self.spaces)
        ranked = sorted(order, key=lambda model: (-best[model], order.index(model)))[:self.leaders]
        for model in ranked:
            if not any(t.user_attrs.get("kind") == LEADER_DEFAULT for t in runs[model]):
                return model, LEADER_DEFAULT
        return min(ranked, key=lambda model: (len(runs[model]), ranked.index(model))), "search"

    def __call__(self, trial) -> dict:
        models = list(self.spaces)
        constants = {}
        model, kind = models[0], "search"
        if len(models) > 1:
            model, kind = self.budget(trial)
            trial.set_user_attr(MODEL_DIMENSION, model)
            trial.set_user_attr("kind", kind)
            constants[MODEL_DIMENSION] = model
            constants[BUDGET_KIND] = kind
            if kind == "start-up" and self.rung_epochs is not None:
                constants["epochs"] = self.rung_epochs
        for dim, spec in self.spaces[model].items():
            key = self.key(model, dim)
            parsed = parse_spec(key, spec)
            if kind != "search" and self.recipes is not None:
                constants[key] = self.recipes[model][dim]
            elif parsed.kind == "fixed":
                constants[key] = parsed.values[0]
            elif parsed.kind in ("uniform", "loguniform"):
                trial.suggest_float(key, *parsed.values, log=parsed.kind == "loguniform")
            elif parsed.kind == "randint":
                trial.suggest_int(key, *parsed.values)
            else:
                trial.suggest_categorical(key, list(parsed.values))
        return constants


def _kind_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if isinstance(default, str):
        return isinstance(value, str)
    return isinstance(value, int if isinstance(default, int) else (int, float))


def check_space(spaces: dict[str, dict], spec: RunSpec) -> None:
    """Every value the search can draw must make a valid RunSpec with options of the right type, for every model.
    Checked in the driver before Ray starts: a bad range would otherwise fail every trial."""
    conditional = ConditionalSpace(spaces)
    for model, specs in spaces.items():
        base = spec.with_overrides({"name": model})
        for dim, text in specs.items():
            key = conditional.key(model, dim)
            default = getattr(base.model if hasattr(base.model, dim) else base.train, dim)
            for value in parse_spec(key, text).drawable():
                if not _kind_ok(value, default):
                    raise ConfigError(f"search space {key}: can draw {value!r}, but {dim} is a "
                                      f"{type(default).__name__}")
                try:
                    base.with_overrides({dim: value})
                except (ValueError, CorrhashError) as exc:
                    raise ConfigError(f"search space {key}: can draw {value!r}, which is invalid ({exc})") from exc
