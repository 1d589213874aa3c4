"""An ablation grid: a YAML file expanded into cells (method x bits x seed x dataset x extra axes).

Everything is checked here, before any cell runs, so a typo in cell 300 of 360 costs nothing: unknown keys,
methods and fields, wrongly typed values, configurations the model or trainer would refuse, unprepared data
folders and impossible resources are `ConfigError`s naming the grid file and the key at fault.

A cell's id hashes what it computes (the data's content hash, the model and train configs), not where it sits
in a grid: the same configuration on the same data has the same id in every grid and every folder, so results
can be merged across ablations, and cells a grid generates twice (e.g. NASH under a rank axis it ignores, pinned
by a per-method override) run once. Imports neither ray nor mlflow: jobs/ablate.py --dry-run needs neither.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from corrhash.data import TfidfShards
from corrhash.data.files import is_uri
from corrhash.errors import ConfigError, CorrhashError
from corrhash.models import ModelConfig, list_models, model_class
from corrhash.runs.spec import RunSpec
from corrhash.train.config import TrainConfig
from corrhash.train.recipes import DEFAULT_RECIPE, RECIPE_NAMES, recipe_values

TOP_KEYS = ("name", "description", "recipe", "data", "methods", "bits", "seeds", "axes", "fixed", "resources")
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
# Set by the grid's own keys (methods, bits, seeds) or by the scheduler (device follows the cell's gpus).
RESERVED = {"name": "methods", "bits": "bits", "seed": "seeds", "device": "resources (gpus)"}
FIELD_TYPES = {**get_type_hints(TrainConfig), **get_type_hints(ModelConfig)}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Cell:
    """One run of an ablation: a configuration on one prepared dataset, with the resources it asks Ray for."""

    id: str
    """16 hex chars of sha256 over the data's content hash and the model and train configs."""
    dataset: str
    """The grid's label of the data (e.g. 'reuters', '20ng-paper')."""
    data: str
    """Absolute path or URI of the prepared folder."""
    model: ModelConfig
    train: TrainConfig
    axes: dict
    """dataset, method, bits, seed, then each extra axis -> the value this cell has (after overrides)."""
    cpus: float
    gpus: float

    def spec(self) -> RunSpec:
        return RunSpec(data=self.data, model=self.model, train=self.train, threads=max(1, int(self.cpus)))

    def to_dict(self) -> dict:
        return {"id": self.id, "dataset": self.dataset, "data": self.data, "model": self.model.to_dict(),
                "train": self.train.to_dict(), "axes": dict(self.axes), "cpus": self.cpus, "gpus": self.gpus}

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        return cls(id=d["id"], dataset=d["dataset"], data=d["data"], model=ModelConfig.from_dict(d["model"]),
                   train=TrainConfig.from_dict(d["train"]), axes=dict(d["axes"]), cpus=float(d["cpus"]),
                   gpus=float(d["gpus"]))

    def label(self) -> str:
        """'reuters corrsh 64b seed 0 rank=5 mixture=10': for logs, run names and the dry run."""
        a = self.axes
        extra = [f"{k}={v}" for k, v in a.items() if k not in ("dataset", "method", "bits", "seed")]
        return " ".join([a["dataset"], a["method"], f"{a['bits']}b", f"seed {a['seed']}", *extra])


# Config fields added after cell ids were first recorded: left out of the id while at their default, so a cell
# that does not use them keeps its id (and a finished ablation is not rerun). Add every new field here.
LATER_FIELDS = {"model": ("beta", "encoder_input", "svm_c", "neighbour_weight", "graph", "graph_search", "encoder",
                          "trees", "tree_temperature", "code_temperature", "prior_correlation"),
                "train": ("grad_clip",)}
_DEFAULTS = {"model": ModelConfig().to_dict(), "train": TrainConfig().to_dict()}


def cell_id(content_hash: str, model: ModelConfig, train: TrainConfig) -> str:
    configs = {"model": model.to_dict(), "train": train.to_dict()}
    for section, names in LATER_FIELDS.items():
        for name in names:
            if configs[section][name] == _DEFAULTS[section][name]:
                del configs[section][name]
    canonical = json.dumps({"data": content_hash, **configs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class Grid:
    name: str
    description: str
    source: Path
    cells: list[Cell]
    axis_names: list[str]
    """The extra axes, in the order the grid file names them."""
    datasets: dict[str, str]
    """label -> absolute prepared folder."""

    def describe(self) -> str:
        """The dry-run text: one line per cell, then the totals."""
        lines = [f"{c.id}  {c.label()}  cpus={c.cpus:g} gpus={c.gpus:g}" for c in self.cells]
        methods = list(dict.fromkeys(c.model.name for c in self.cells))
        lines.append(f"{len(self.cells)} cells, {sum(c.cpus for c in self.cells):g} CPU-slots, "
                     f"{sum(c.gpus for c in self.cells):g} GPU-slots; datasets: {', '.join(self.datasets)}; "
                     f"methods: {', '.join(methods)}")
        return "\n".join(lines)


_SHOWN = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 6, 6, 60, 60


def shown(value) -> str:
    """A value of the grid as an error shows it: a bounded repr, so a YAML alias bomb (a few lines naming a
    billion leaves) is neither expanded nor printed whole."""
    return _SHOWN.repr(value)


def load_grid(path: str | Path, name: str | None = None, data_root: str | Path | None = None,
              fixed: dict | None = None) -> Grid:
    """Read and check a grid file and expand its cells. `name` overrides the file's name (default: the file's
    stem); relative data paths are resolved against `data_root` (default: the current directory); `fixed` values
    (jobs/ablate.py --set) replace the file's."""
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: cannot read the grid ({exc})") from exc
    fail = _Failer(source)
    if not isinstance(raw, dict):
        fail("", f"expected a mapping with keys {', '.join(TOP_KEYS)}, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        fail(str(unknown[0]), f"unknown key (known: {', '.join(TOP_KEYS)})")
    for key in ("data", "methods", "bits", "seeds"):
        if key not in raw:
            fail(key, "missing (required: data, methods, bits, seeds)")

    grid_name = name if name is not None else raw.get("name", source.stem)
    if not (isinstance(grid_name, str) and NAME_PATTERN.fullmatch(grid_name)):
        fail("name", f"{shown(grid_name)}: use letters, digits, '.', '_' and '-' only")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        fail("description", f"expected text, got {type(description).__name__}")

    datasets = _datasets(raw["data"], fail, Path(data_root) if data_root is not None else Path.cwd())
    methods = _methods(raw["methods"], fail)
    bits = _int_list(raw["bits"], "bits", fail)
    seeds = _int_list(raw["seeds"], "seeds", fail)
    axes = _axes(raw.get("axes"), fail)
    # `fixed` (e.g. jobs/ablate.py --set epochs=50) wins over the file's, and is checked like it.
    file_fixed = raw.get("fixed")
    fixed = _settings({**(file_fixed or {}), **fixed} if fixed and isinstance(file_fixed, (dict, type(None)))
                      else file_fixed, "fixed", fail)
    cpus, gpus = _resources(raw.get("resources"), fail)
    # The recipe's values come first, then the method's own (HashModel.recipe): fixed values, axes and a method's
    # overrides all win over them. The paper's
    # grids pin `recipe: authors`; a grid without the key starts from the jobs' default recipe.
    recipe = raw.get("recipe", DEFAULT_RECIPE)
    if recipe not in RECIPE_NAMES:
        fail("recipe", f"{shown(recipe)}: unknown recipe (known: {', '.join(RECIPE_NAMES)})")
    start = recipe_values(recipe)
    axis_names = list(dict.fromkeys(k for product in axes for k in product))
    for key in fixed:
        if key in axis_names:
            fail(f"fixed.{key}", "also an axis: give it in one place")

    cells: dict[str, Cell] = {}
    for (label, (folder, content_hash)), (method, overrides), bit, seed in itertools.product(
            datasets.items(), methods.items(), bits, seeds):
        for product in axes:
            for combo in itertools.product(*product.values()):
                own = model_class(method).recipe if method in list_models() else {}  # unknown: named below
                values = {**start, **own, **fixed, **dict(zip(product, combo)), **overrides, "name": method,
                          "bits": bit}
                head = {"dataset": label, "method": method, "bits": bit, "seed": seed}
                cell = _cell(label, folder, content_hash, values, seed, head, axis_names, cpus, gpus, fail)
                cells.setdefault(cell.id, cell)
    return Grid(name=grid_name, description=description, source=source, cells=list(cells.values()),
                axis_names=axis_names, datasets={label: folder for label, (folder, _) in datasets.items()})


class _Failer:
    """Raises ConfigError naming the grid file and the key at fault."""

    def __init__(self, source: Path):
        self.source = source

    def __call__(self, key: str, message: str) -> None:
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        raise ConfigError(where + message)


def _expand(text: str, key: str, fail: _Failer) -> str:
    """${VAR} and ${VAR:-default} (default when VAR is unset or empty, as in the shell)."""
    def value(match: re.Match) -> str:
        var, default = match.group(1), match.group(2)
        found = os.environ.get(var)
        if found:
            return found
        if default is None:
            fail(key, f"environment variable {var} is not set (write ${{{var}:-default}} for a default)")
        return default

    return _ENV.sub(value, text)


def _datasets(data: Any, fail: _Failer, root: Path) -> dict[str, tuple[str, str]]:
    """label -> (absolute folder, content hash); each folder must be prepared shards."""
    if not isinstance(data, dict) or not data:
        fail("data", "expected a non-empty mapping of dataset label -> prepared folder")
    out = {}
    for label, where in data.items():
        key = f"data.{label}"
        if not (isinstance(label, str) and NAME_PATTERN.fullmatch(label)):
            fail(key, "a dataset label uses letters, digits, '.', '_' and '-' only")
        if not isinstance(where, str) or not where:
            fail(key, f"expected a folder path, got {shown(where)}")
        expanded = _expand(where, key, fail)
        folder = expanded if is_uri(expanded) else os.path.abspath(root / Path(expanded).expanduser())
        try:
            shards = TfidfShards(folder)
        except (CorrhashError, OSError) as exc:
            fail(key, f"{folder} is not a prepared dataset ({exc})")
        same = [other for other, (_, content_hash) in out.items() if content_hash == shards.content_hash]
        if same:
            fail(key, f"{folder} holds the same data as data.{same[0]} (content hash "
                      f"{shards.content_hash[:12]}…): their cells would be one and the same")
        out[label] = (folder, shards.content_hash)
    return out


def _methods(methods: Any, fail: _Failer) -> dict[str, dict]:
    if not isinstance(methods, dict) or not methods:
        fail("methods", "expected a non-empty mapping of method name -> overrides ({} for none)")
    known = list_models()
    out = {}
    for method, overrides in methods.items():
        if method not in known:
            fail(f"methods.{method}", f"unknown method (known: {', '.join(known)})")
        out[method] = _settings(overrides, f"methods.{method}", fail)
    return out


def _settings(values: Any, key: str, fail: _Failer) -> dict:
    """A mapping of ModelConfig/TrainConfig field -> one value, each checked against the field's type."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        fail(key, f"expected a mapping of field -> value, got {type(values).__name__}")
    out = {}
    for field, value in values.items():
        _check_field(field, f"{key}.{field}", fail)
        out[field] = _typed(value, field, f"{key}.{field}", fail)
    return out


def _axes(axes: Any, fail: _Failer) -> list[dict[str, list]]:
    """A mapping (one Cartesian product) or a list of mappings (their union); no axes is one empty product."""
    if axes is None:
        return [{}]
    products = axes if isinstance(axes, list) else [axes]
    if not products:
        fail("axes", "empty list (leave axes out for none)")
    out = []
    for i, product in enumerate(products):
        where = f"axes[{i}]" if isinstance(axes, list) else "axes"
        if not isinstance(product, dict) or not product:
            fail(where, "expected a non-empty mapping of field -> list of values")
        checked = {}
        for field, values in product.items():
            key = f"{where}.{field}"
            _check_field(field, key, fail)
            if not isinstance(values, list) or not values:
                fail(key, f"expected a non-empty list of values, got {shown(values)}")
            checked[field] = [_typed(v, field, key, fail) for v in values]
        out.append(checked)
    return out


def _check_field(field: Any, key: str, fail: _Failer) -> None:
    if field in RESERVED:
        fail(key, f"{field} is set through the grid's {RESERVED[field]} key")
    if field not in FIELD_TYPES:
        known = ", ".join(sorted(set(FIELD_TYPES) - set(RESERVED)))
        fail(key, f"not a ModelConfig or TrainConfig field (known: {known})")


def _typed(value: Any, field: str, key: str, fail: _Failer) -> Any:
    """`value` if it has the field's type (bool is not an int; an int is accepted, as a float, for a float)."""
    kind = FIELD_TYPES[field]
    if value is None and kind == float | None:
        return None
    if kind in (float, float | None) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and type(value) is kind:
        return value
    if get_origin(kind) is Literal:
        if any(value == choice and type(value) is type(choice) for choice in get_args(kind)):
            return value
        fail(key, f"{shown(value)}: expected one of {', '.join(map(str, get_args(kind)))}")
    hint = ""
    if isinstance(value, str) and kind in (float, float | None):
        hint = " (YAML reads 1e-3 as text: write 0.001 or 1.0e-3)"
    fail(key, f"{shown(value)} ({type(value).__name__}): expected {getattr(kind, '__name__', kind)}{hint}")


def _int_list(values: Any, key: str, fail: _Failer) -> list[int]:
    if not isinstance(values, list) or not values:
        fail(key, f"expected a non-empty list of integers, got {shown(values)}")
    for v in values:
        if type(v) is not int:
            fail(key, f"{shown(v)} ({type(v).__name__}): expected int")
    return list(dict.fromkeys(values))


def _resources(resources: Any, fail: _Failer) -> tuple[float, float]:
    """cpus > 0 per cell; gpus a share of one GPU (0 to 1, so several cells pack onto one) or whole GPUs."""
    resources = {"cpus": 1, "gpus": 0} if resources is None else resources
    if not isinstance(resources, dict):
        fail("resources", f"expected a mapping with cpus and gpus, got {shown(resources)}")
    out = {}
    for name, amount in resources.items():
        key = f"resources.{name}"
        if name not in ("cpus", "gpus"):
            fail(key, "unknown resource (known: cpus, gpus)")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            fail(key, f"{shown(amount)} is not a number")
        if name == "cpus" and not (0 < amount < float("inf")):
            fail(key, f"{amount}: must be a number > 0")
        if name == "gpus" and not (amount >= 0 and (amount <= 1 or float(amount).is_integer())):
            fail(key, f"{amount}: must be between 0 and 1 (a share of one GPU) or a whole number")
        out[name] = float(amount)
    cpus, gpus = out.get("cpus", 1.0), out.get("gpus", 0.0)
    return cpus, gpus


def _cell(label: str, folder: str, content_hash: str, values: dict, seed: int, head: dict, axis_names: list[str],
          cpus: float, gpus: float, fail: _Failer) -> Cell:
    try:  # RunSpec.with_overrides is the one place a flat field name is routed to its config
        spec = RunSpec(folder, ModelConfig(seed=seed), TrainConfig(seed=seed)).with_overrides(values)
    except ConfigError as exc:
        chosen = {**head, **{k: values[k] for k in axis_names if k in values}}
        where = " ".join(f"{k}={v}" for k, v in chosen.items())
        fail(f"cell {where}", str(exc))
    model, train = spec.model, spec.train
    settings = {**model.to_dict(), **train.to_dict()}
    axes = {**head, **{name: settings[name] for name in axis_names}}
    return Cell(id=cell_id(content_hash, model, train), dataset=label, data=folder, model=model, train=train,
                axes=axes, cpus=cpus, gpus=gpus)
