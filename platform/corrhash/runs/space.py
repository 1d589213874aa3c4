"""The search space of a tune: a default over CorrSH's dropout, rank v, mixture k and lr, overridable
from YAML or `name=kind:args` strings, and pinned by the job's own flags (`--dropout 0.1`).

Kinds: uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH (inclusive), choice:A,B,C, or a
plain value (fixed). The space is kept as these strings (logged as the tune's params) and turned
into Tune domains only for the Tuner.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from corrhash.errors import ConfigError, CorrhashError
from corrhash.runs.spec import RunSpec

TUNABLE = ("dropout", "rank", "mixture", "lr", "energy_terms", "hidden", "batch_size")
DEFAULT_SPACE = {
    "dropout": "uniform:0:0.5",
    "rank": "randint:0:16",
    "mixture": "randint:1:16",
    "lr": "loguniform:1e-4:1e-2",
}


def parse_domain(name: str, spec):
    from ray import tune

    if not isinstance(spec, str):
        return spec  # a fixed value from YAML
    if ":" not in spec:  # a fixed value on the command line: a number, true/false, or text
        try:
            return json.loads(spec)
        except json.JSONDecodeError:
            return spec
    kind, _, args = spec.partition(":")
    try:
        if kind == "uniform":
            low, high = map(float, args.split(":"))
            return tune.uniform(low, high)
        if kind == "loguniform":
            low, high = map(float, args.split(":"))
            return tune.loguniform(low, high)
        if kind == "randint":
            low, high = map(int, args.split(":"))
            return tune.randint(low, high + 1)  # inclusive upper bound, as written
        if kind == "choice":
            return tune.choice([yaml.safe_load(v) for v in args.split(",")])
    except ValueError as exc:
        raise ConfigError(f"search space {name}={spec!r}: {exc}") from exc
    raise ConfigError(f"search space {name}={spec!r}: unknown kind {kind!r} (uniform, loguniform, randint, choice)")


def space_specs(yaml_file: Path | None = None, overrides: list[str] | None = None, pinned: dict | None = None) -> dict:
    """{param: spec}: DEFAULT_SPACE, then the YAML file, then `--space NAME=SPEC`; a dimension whose own
    flag was given (`pinned`, e.g. {"dropout": 0.1} for --dropout 0.1) is fixed to that value."""
    specs = dict(DEFAULT_SPACE)
    chosen = {}
    if yaml_file is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{yaml_file}: cannot read search space ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_file}: expected a mapping of parameter: spec")
        chosen.update(loaded)
    for item in overrides or []:
        name, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"--space {item!r}: expected NAME=SPEC, e.g. lr=loguniform:1e-4:1e-2")
        chosen[name.strip()] = spec.strip()
    for name, value in (pinned or {}).items():
        if name in chosen:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value} and the search space's {name}={chosen[name]!r}: give one of them")
        if name in TUNABLE:
            chosen[name] = value
    specs.update(chosen)
    unknown = sorted(set(specs) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"search space: unknown parameter(s) {unknown}; tunable: {sorted(TUNABLE)}")
    return specs


def domains(specs: dict) -> dict:
    """{param: Tune domain or fixed value}, for Tune's param_space."""
    return {name: parse_domain(name, spec) for name, spec in specs.items()}


def _drawable(name: str, domain) -> list:
    """The extreme values a domain can draw (every value of a choice); a plain value is fixed."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, (Float, Integer)):
        if not domain.lower < domain.upper:
            raise ConfigError(f"search space {name}: empty range {domain.lower}..{domain.upper}")
        # Tune's upper bounds are exclusive: the largest draw is just below `upper`.
        top = domain.upper - 1 if isinstance(domain, Integer) else math.nextafter(domain.upper, domain.lower)
        return [domain.lower, top]
    return [domain]


def check_space(space: dict, spec: RunSpec) -> None:
    """Every value the search can draw must make a valid RunSpec with options of the right type.
    Checked in the driver before Ray starts: a bad range would otherwise fail every trial."""
    for name, domain in space.items():
        default = getattr(spec.model if hasattr(spec.model, name) else spec.train, name)
        for value in _drawable(name, domain):
            kind_ok = (isinstance(value, bool) if isinstance(default, bool)
                       else not isinstance(value, bool) and isinstance(value, int if isinstance(default, int)
                                                                       else (int, float)))
            if not kind_ok:
                raise ConfigError(f"search space {name}: can draw {value!r}, but {name} is a "
                                  f"{type(default).__name__}")
            try:
                spec.with_overrides({name: value})
            except (ValueError, CorrhashError) as exc:
                raise ConfigError(f"search space {name}: can draw {value!r}, which is invalid ({exc})") from exc
