"""The search space: defaults from the issue, overridable from YAML or `name=kind:args` strings.

Kinds: uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH (inclusive), choice:A,B,C, or a
plain value (fixed).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from corrhash.errors import ConfigError

TUNABLE = {"dropout": "model", "rank": "model", "mixture": "model", "lr": "train", "energy_terms": "model",
           "hidden": "model", "batch_size": "train"}
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


def build_space(yaml_file: Path | None = None, overrides: list[str] | None = None) -> dict:
    """{param: tune domain}, starting from DEFAULT_SPACE."""
    specs = dict(DEFAULT_SPACE)
    if yaml_file is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{yaml_file}: cannot read search space ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_file}: expected a mapping of parameter: spec")
        specs.update(loaded)
    for item in overrides or []:
        name, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"--space {item!r}: expected NAME=SPEC, e.g. lr=loguniform:1e-4:1e-2")
        specs[name.strip()] = spec.strip()
    unknown = sorted(set(specs) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"search space: unknown parameter(s) {unknown}; tunable: {sorted(TUNABLE)}")
    return {name: parse_domain(name, spec) for name, spec in specs.items()}
