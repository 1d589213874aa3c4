"""Search-space specs: the grammar every search space is written in, and the recipe dimensions shared by trained
models. Each registered model declares its own default space (`HashModel.search_space`) from these, timm-style:
the model owns its defaults. Parsing lives here, without Ray or Optuna, so a model's space is checked anywhere.

A spec is a string: uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH (inclusive), choice:A,B,C, or a plain
value (fixed; YAML may also give a number or bool). Specs stay strings (logged as the tune's params) until a
search turns them into suggestions (`runs/space.py`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import yaml

from corrhash.errors import ConfigError

KINDS = ("uniform", "loguniform", "randint", "choice")

# Dimensions the one epoch loop uses for every model it trains (any `trainable` model).
LOOP_SPACE = {
    "lr": "loguniform:3e-4:1e-2",
    "batch_size": "choice:50,100,200",
    "grad_clip": "choice:0,1,10",
}
# ...and those every VAE's loss uses: dropout in the encoder, the KL schedule (0: full weight at once) and its
# final weight beta, the decoder-noise floor, what the encoder reads.
VAE_RECIPE_SPACE = {
    **LOOP_SPACE,
    "dropout": "uniform:0:0.5",
    "anneal_step": "choice:0,0.001,0.005,0.02,0.05",
    "beta": "uniform:0.1:1",
    "noise_floor": "uniform:0:0.3",
    "encoder_input": "choice:tfidf,binary",
}
LOW_RANK_SPACE = {"rank": "randint:0:16", "mixture": "randint:1:16"}
"""CorrSH's correlated posterior: rank v of U and the mixture size k of its bound."""
MIXTURE_PRIOR_SPACE = {"components": "randint:2:16"}
"""BMSH's learned Bernoulli-mixture prior."""
NEIGHBOUR_SPACE = {"neighbours": "randint:5:50", "neighbour_weight": "loguniform:0.1:3", "graph": "choice:knn,mutual"}
"""The neighbourhood part (models/neighbours.py): the graph's k and kind, and the weight of the pairwise term."""
TREE_PRIOR_SPACE = {"neighbours": "randint:5:25", "graph": "choice:knn,mutual", "trees": "randint:1:20",
                    "tree_temperature": "loguniform:0.02:1", "code_temperature": "uniform:0.1:1",
                    "beta": "loguniform:0.02:1"}
"""SNUH's graph prior (models/snuh.py): the graph's k and kind, the spanning trees averaged and their temperature,
the posterior mean's temperature; and its KL weight, whose range is the authors' grid (0.01-0.1 on twice the node
KL) widened up to the shared recipe's."""


@dataclass(frozen=True)
class Dimension:
    """One parsed spec: `kind` is one of KINDS or "fixed"; `values` its bounds, choices or the fixed value."""

    kind: str
    values: tuple

    def drawable(self) -> list:
        """The values to check a space with: a range's two ends, every choice, the fixed value."""
        return list(self.values)


def parse_spec(name: str, spec) -> Dimension:
    """`spec` (a string, or a plain YAML value) as a Dimension; a ConfigError names the dimension and the spec."""
    if not isinstance(spec, str):
        return Dimension("fixed", (spec,))
    if ":" not in spec:  # a fixed value on the command line: a number, true/false, or text
        try:
            return Dimension("fixed", (json.loads(spec),))
        except json.JSONDecodeError:
            return Dimension("fixed", (spec,))
    kind, _, args = spec.partition(":")
    try:
        if kind in ("uniform", "loguniform"):
            low, high = map(float, args.split(":"))
            if not (math.isfinite(low) and math.isfinite(high) and low < high) or (kind == "loguniform" and low <= 0):
                raise ValueError(f"needs finite LOW < HIGH{' and LOW > 0' if kind == 'loguniform' else ''}")
            return Dimension(kind, (low, high))
        if kind == "randint":
            low, high = map(int, args.split(":"))
            if low > high:
                raise ValueError(f"empty range {low}..{high}")
            return Dimension(kind, (low, high))
        if kind == "choice":
            choices = tuple(yaml.safe_load(v) for v in args.split(","))
            if len(set(map(repr, choices))) != len(choices):
                raise ValueError("repeated choices")
            return Dimension(kind, choices)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"search space {name}={spec!r}: {exc}") from exc
    raise ConfigError(f"search space {name}={spec!r}: unknown kind {kind!r} ({', '.join(KINDS)})")
