"""Hyper-parameters of every hashing model, as one flat, serialisable dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from corrhash.errors import ConfigError

# Step used when the model has no (v, k) of its own: the authors' 1/(50v + 50k) at the
# paper's defaults v = k = 10, so baselines anneal on the same schedule as default CorrSH.
DEFAULT_ANNEAL_STEP = 1.0 / (50 * 10 + 50 * 10)
EncoderInput = Literal["tfidf", "binary"]
ENCODER_INPUTS: tuple[str, ...] = get_args(EncoderInput)
GraphKind = Literal["knn", "mutual"]  # models/graph.py
GRAPH_KINDS: tuple[str, ...] = get_args(GraphKind)
SnuhEncoder = Literal["linear", "mlp"]  # models/snuh.py
SNUH_ENCODERS: tuple[str, ...] = get_args(SnuhEncoder)
GraphSearch = Literal["auto", "exact", "pruned", "nndescent"]  # models/graph.py
GRAPH_SEARCHES: tuple[str, ...] = get_args(GraphSearch)


@dataclass
class ModelConfig:
    name: str = "corrsh"
    """registered model name (see corrhash.models.list_models())"""
    bits: int = 64
    """length m of the binary hash code"""
    hidden: int = 500
    """width of the two hidden encoder layers"""
    dropout: float = 0.2
    """dropout probability after the encoder's hidden layers (paper: keep prob 0.8 or 0.9)"""
    rank: int = 10
    """corrsh, corrsh-mixture: rank v of the low-rank covariance perturbation U (0 = independent bits)"""
    mixture: int = 10
    """corrsh, corrsh-mixture: number of components k of the mixture h_k(s) in the lower bound"""
    components: int = 10
    """bmsh, corrsh-mixture: number of components of the learned Bernoulli-mixture prior over codes"""
    neighbours: int = 25
    """sth, *-nbr: neighbours k per document in the k-nearest-neighbour cosine graph"""
    neighbour_weight: float = 1.0
    """*-nbr: weight lambda of the pairwise term (a sampled neighbour's words decoded from the document's code)"""
    graph: GraphKind = "knn"
    """*-nbr: 'knn' (an edge where either document is among the other's k nearest, STH's) or 'mutual' (both)"""
    graph_search: GraphSearch = "auto"
    """sth, *-nbr: how the document graph is searched: auto (exact up to 30,000 train documents, pruned above),
    exact, pruned (an inverted index of each document's heaviest terms, recall measured), nndescent (an extra)"""
    encoder: SnuhEncoder = "linear"
    """snuh, corrsh-snuh: 'linear' (the authors': each posterior head a linear map of the input, weights from
    +-0.05) or 'mlp' (the platform's two hidden layers, `hidden` wide, with dropout)"""
    trees: int = 10
    """snuh, corrsh-snuh: random spanning trees of the graph averaged into the edge weights of the prior's tree
    approximation (the authors' --num_trees)"""
    tree_temperature: float = 0.1
    """snuh, corrsh-snuh: temperature of the trees' perturbed cosines (lower keeps the most similar pairs)"""
    code_temperature: float = 0.1
    """snuh, corrsh-snuh: the posterior mean is sigmoid(logit / code_temperature) (the authors' --temperature)"""
    prior_correlation: float = 0.99
    """snuh, corrsh-snuh: correlation tau of the graph prior between two neighbours' codes (the authors' code's;
    with encoder 'mlp' it pulls every code to one value: use 0.9 there, models/snuh.py)"""
    svm_c: float = 0.1
    """sth: inverse regularisation strength C of the per-bit linear SVMs"""
    energy_terms: bool = False
    """corrsh, corrsh-mixture: keep the Boltzmann energies E(s), E(s~) of eq. 24 (authors' code drops them)"""
    noise_floor: float = 0.05
    """lowest scale of the Gaussian noise added to the decoder input"""
    anneal_step: float | None = None
    """per-epoch KL-weight rise / noise fall; None: 1/(50v+50k) for corrsh(-mixture), 1/1000 for others; 0: no
    annealing (full KL weight and the noise floor from the first step)"""
    beta: float = 1.0
    """final KL weight (beta-VAE style): the annealed weight rises to beta, not 1"""
    encoder_input: EncoderInput = "tfidf"
    """what the encoder reads: 'tfidf' (the shards' values) or 'binary' (word presence); decoders always
    reconstruct the present words"""
    seed: int = 0
    """seed of the fit of models without epochs (lsh's projection, sph's and sth's eigensolvers)"""

    def __post_init__(self) -> None:
        problems = []
        if self.bits < 1:
            problems.append(f"bits must be >= 1, got {self.bits}")
        if self.hidden < 1:
            problems.append(f"hidden must be >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rank < 0:
            problems.append(f"rank must be >= 0, got {self.rank}")
        if self.mixture < 1:
            problems.append(f"mixture must be >= 1, got {self.mixture}")
        if self.components < 1:
            problems.append(f"components must be >= 1, got {self.components}")
        if self.neighbours < 1:
            problems.append(f"neighbours must be >= 1, got {self.neighbours}")
        if not 0.0 <= self.noise_floor <= 1.0:
            problems.append(f"noise_floor must be in [0, 1], got {self.noise_floor}")
        if self.anneal_step is not None and not (math.isfinite(self.anneal_step) and self.anneal_step >= 0):
            problems.append(f"anneal_step must be a finite number >= 0 (0: no annealing) or None, "
                            f"got {self.anneal_step}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            problems.append(f"beta must be a finite number > 0, got {self.beta}")
        if self.encoder_input not in ENCODER_INPUTS:
            problems.append(f"encoder_input must be one of {', '.join(ENCODER_INPUTS)}, got {self.encoder_input!r}")
        if not (math.isfinite(self.neighbour_weight) and self.neighbour_weight >= 0):
            problems.append(f"neighbour_weight must be a finite number >= 0, got {self.neighbour_weight}")
        if self.graph not in GRAPH_KINDS:
            problems.append(f"graph must be one of {', '.join(GRAPH_KINDS)}, got {self.graph!r}")
        if self.graph_search not in GRAPH_SEARCHES:
            problems.append(f"graph_search must be one of {', '.join(GRAPH_SEARCHES)}, got {self.graph_search!r}")
        if self.encoder not in SNUH_ENCODERS:
            problems.append(f"encoder must be one of {', '.join(SNUH_ENCODERS)}, got {self.encoder!r}")
        if self.trees < 1:
            problems.append(f"trees must be >= 1, got {self.trees}")
        for name in ("tree_temperature", "code_temperature"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                problems.append(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0.0 <= self.prior_correlation < 1.0:
            problems.append(f"prior_correlation must be in [0, 1), got {self.prior_correlation}")
        if not (math.isfinite(self.svm_c) and self.svm_c > 0):
            problems.append(f"svm_c must be a finite number > 0, got {self.svm_c}")
        if problems:
            raise ConfigError("invalid ModelConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown ModelConfig keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**values)
