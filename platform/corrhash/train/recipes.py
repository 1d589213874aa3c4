"""Training recipes: named sets of ModelConfig/TrainConfig values a job starts from (`--recipe`), before its own
flags. The config dataclasses' defaults stay the authors' (so saved models, ablation cell ids and tests keep their
meaning); the jobs' default recipe is `converge`, chosen on the searches' evidence (`results/best.md`).

- `authors`: the authors' code. The KL weight and the decoder noise anneal by 1/(50v + 50k) per epoch (1/1000 for
  the models without v, k), so after 100 epochs the KL weight is 0.1: every binary VAE is still improving when it
  stops (`results/methods.md`). The paper grids pin it (`recipe: authors`) to reproduce the paper.
- `converge`: the authors' lr (1e-3) with the KL weight at full weight by epoch 20 (step 0.05) and room to stop on
  a plateau (150 epochs, patience 20). On Reuters at 64 bits CorrSH then selects epoch 92 at val 0.8344 where the
  authors' schedule selects its last epochs at 0.8204. lr 3e-3 plateaus sooner (epoch ~40) but collapsed a 32-bit
  run in its first epoch (every bit deterministic, KL = m log 2) on one seed in three: see results/best.md.
"""

from __future__ import annotations

from corrhash.errors import ConfigError

RECIPES: dict[str, dict] = {
    "authors": {},
    "converge": {"anneal_step": 0.05, "epochs": 150, "patience": 20},
}
DEFAULT_RECIPE = "converge"
RECIPE_NAMES = tuple(RECIPES)


def recipe_values(name: str) -> dict:
    """{field: value} of recipe `name` (fields of ModelConfig or TrainConfig); a named error if unknown."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return dict(RECIPES[name])
