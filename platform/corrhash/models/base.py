"""Shared pieces of the hashing models: the HashModel contract, a sparse-input layer,
the MLP encoder, the softmax decoder and the small probability helpers they use."""

from __future__ import annotations

import math

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from corrhash.models.config import DEFAULT_ANNEAL_STEP, ModelConfig

Noise = dict[str, Tensor]


def as_batch(x: Tensor) -> Tensor:
    """Accept a CSR (preferred), COO or dense [B, V] batch; COO becomes CSR so every
    sparse path below only has to handle one layout."""
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D [docs, features] batch, got shape {tuple(x.shape)}")
    if x.layout == torch.sparse_coo:
        return x.coalesce().to_sparse_csr()
    if x.layout not in (torch.strided, torch.sparse_csr):
        raise TypeError(f"unsupported tensor layout {x.layout}; pass sparse CSR or dense")
    return x


def present_word_log_likelihood(log_probs: Tensor, x: Tensor) -> Tensor:
    """Per-document sum of log p(w|s) over the words present in x (value > 0).

    For CSR input the log-probabilities are gathered at the non-zeros' (row, col), so x
    is never densified. Assumes canonical CSR (each word at most once per row), which is
    what "distinct words present" means for a TF-IDF matrix.
    """
    if x.layout == torch.sparse_csr:
        crow = x.crow_indices()
        counts = (crow[1:] - crow[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), counts)
        cols = x.col_indices().long()
        present = x.values() > 0
        rows, cols = rows[present], cols[present]
        picked = log_probs[rows, cols]
        return log_probs.new_zeros(x.shape[0]).index_add(0, rows, picked)
    return (log_probs * (x > 0).to(log_probs.dtype)).sum(dim=1)


def straight_through_bernoulli(probs: Tensor, uniform: Tensor) -> Tensor:
    """Hard sample 1[u < p] forward, gradient of p backward (Bengio et al. 2013)."""
    hard = (uniform < probs).to(probs.dtype)
    return hard + probs - probs.detach()


def bernoulli_log_prob(s: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(s; sigmoid(logits)) summed over the last dim, in the stable form
    s*l - softplus(l) (= s log sigmoid(l) + (1-s) log(1-sigmoid(l)))."""
    return (s * logits - F.softplus(logits)).sum(dim=-1)


def draw_uniform(shape, device, dtype, generator) -> Tensor:
    return torch.rand(shape, device=device, dtype=dtype, generator=generator)


def draw_normal(shape, device, dtype, generator) -> Tensor:
    return torch.randn(shape, device=device, dtype=dtype, generator=generator)


class SparseLinear(nn.Module):
    """x @ W + b for a sparse CSR (or dense) x; W is [in, out] so each document sums the
    rows of its words and the [B, V] input is never materialised."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)  # same init as nn.Linear
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        if x.layout == torch.sparse_csr:
            # A weighted embedding-bag sum is exactly CSR @ W, and its backward is an index_add
            # into W's rows: measured ~7x faster per step than torch.sparse.mm here (CPU).
            return F.embedding_bag(x.col_indices(), self.weight, x.crow_indices(), mode="sum",
                                   per_sample_weights=x.values(), include_last_offset=True) + self.bias
        return x @ self.weight + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def word_presence(x: Tensor) -> Tensor:
    """x with every value > 0 set to 1 and the rest to 0, in x's layout (CSR stays CSR, never densified)."""
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), (x.values() > 0).to(x.dtype),
                                       x.shape, device=x.device, check_invariants=False)
    return (x > 0).to(x.dtype)


class MLPEncoder(nn.Module):
    """V -> hidden -> hidden, each layer ReLU then dropout (as the authors' code).

    `binary_input` reads word presence instead of the TF-IDF values (`ModelConfig.encoder_input`), as some
    published implementations feed their encoders. Dropout takes an explicit mask instead of nn.Dropout so that
    every random number of a loss evaluation comes from the caller's generator (reproducible, testable)."""

    def __init__(self, n_features: int, hidden: int, binary_input: bool = False):
        super().__init__()
        self.input = SparseLinear(n_features, hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.binary_input = binary_input

    def forward(self, x: Tensor, dropout_mask: Tensor | None = None) -> Tensor:
        """`dropout_mask` is [2, B, hidden]: one scaled keep-mask per layer (None: no dropout)."""
        h = F.relu(self.input(word_presence(x) if self.binary_input else x))
        if dropout_mask is not None:
            h = h * dropout_mask[0]
        h = F.relu(self.hidden(h))
        return h if dropout_mask is None else h * dropout_mask[1]


class SoftmaxDecoder(nn.Module):
    """log p(w|code) = log_softmax(W code + b) over the vocabulary (NASH's decoder)."""

    def __init__(self, code_size: int, n_features: int):
        super().__init__()
        self.output = nn.Linear(code_size, n_features)

    def forward(self, code: Tensor) -> Tensor:
        return F.log_softmax(self.output(code), dim=-1)


class HashModel(nn.Module):
    """Contract shared by all models: loss() for training, embed()/encode() for codes,
    end_epoch() for annealing. Annealing state lives in buffers so it checkpoints with
    the weights (state_dict holds plain tensors only, safetensors-compatible)."""

    trainable: bool = True
    uses_neighbours: bool = False
    """True when training pairs each batch with sampled graph neighbours (models/neighbours.py): `fit` then passes
    `neighbours` to loss(). Codes never need them."""
    uses_graph: bool = False
    """True when fitting needs the document graph (models/graph.py): every `uses_neighbours` model, and STH. The
    lifecycles then hand `fit` the corpus's cached graph (train/neighbours.py), searched once for all of them."""
    pairs_weighted: bool = False
    """True when a document's neighbour is drawn in proportion to `pairing_graph`'s edge weights, and its pairwise
    term scaled by half the document's weighted degree (`pair_scale`, SNUH's tree edges); False: uniformly."""
    model_name: str = ""  # set by corrhash.models.register
    search_space: dict[str, str] = {}
    """The model's own default search space, {dimension: spec} (`corrhash.models.space`): only the ModelConfig
    and TrainConfig fields this model uses. A trained model lists the loop's and recipe's dimensions it uses
    (LOOP_SPACE, VAE_RECIPE_SPACE) and its own; a closed-form one its fit's, or none."""
    recipe: dict = {}
    """The model's own starting values of shared fields (ModelConfig/TrainConfig), applied after the job's recipe
    (`--recipe`) and before its flags, where the shared recipe's values do not suit it (SNUH's KL weight)."""
    also_searchable: tuple[str, ...] = ()
    """Fields the model uses that a search may name (`--space hidden=...`) but its default space leaves alone."""

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__()
        self.config = config
        self.n_features = n_features
        self.bits = config.bits
        self.noise_floor = config.noise_floor
        self.anneal_step = (
            config.anneal_step if config.anneal_step is not None else self.default_anneal_step(config)
        )
        self.register_buffer("thresholds", torch.zeros(config.bits))
        self.register_buffer("kl_weight", torch.tensor(0.0))
        self.register_buffer("noise_scale", torch.tensor(1.0))
        # Weights are recomputed from the epoch count rather than accumulated, so that
        # float32 round-off never drifts away from min(1, N*step) over hundreds of epochs.
        self.register_buffer("epochs_done", torch.tensor(0, dtype=torch.int64))
        if not self.epochs_done.is_meta:  # a model built on the meta device (shapes only, artifact.load_model)
            self._apply_schedule()

    @staticmethod
    def default_anneal_step(config: ModelConfig) -> float:
        return DEFAULT_ANNEAL_STEP

    # ---- training -----------------------------------------------------------------
    def sample_noise(
        self, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Noise:
        """All random numbers one loss evaluation needs, drawn on `device`."""
        raise NotImplementedError

    def loss_from_noise(self, x: Tensor, noise: Noise, neighbours: Tensor | None = None) -> dict[str, Tensor]:
        """The loss given pre-drawn noise (deterministic); see loss()."""
        raise NotImplementedError

    def loss(self, x: Tensor, generator: torch.Generator | None = None, neighbours: Tensor | None = None,
             pair_scale: Tensor | None = None) -> dict[str, Tensor]:
        """{"loss": mean(recon + kl_weight * kl), "recon": mean -sum log p(w|s) over
        present words, "kl": mean unweighted KL term}; random numbers from `generator`. A model that
        `uses_neighbours` takes `neighbours` (row i: a sampled graph neighbour of x's row i) and adds
        "neighbour", its pairwise term, weighted into "loss"; one that `pairs_weighted` also takes each pair's
        `pair_scale`."""
        if neighbours is not None and not self.uses_neighbours:
            raise TypeError(f"{self.model_name} does not learn from neighbours; its -nbr model does, where one exists")
        x = as_batch(x)
        noise = self.sample_noise(x.shape[0], x.device, generator)
        if pair_scale is not None:
            return self.loss_from_noise(x, noise, neighbours, pair_scale=pair_scale)
        return self.loss_from_noise(x, noise, neighbours)

    def forward(self, x: Tensor, generator: torch.Generator | None = None, neighbours: Tensor | None = None,
                pair_scale: Tensor | None = None) -> dict[str, Tensor]:
        """loss() as forward, so wrappers such as DistributedDataParallel see every step."""
        return self.loss(x, generator, neighbours, pair_scale)

    def pairing_graph(self, graph: sp.spmatrix, seed: int) -> sp.spmatrix:
        """The graph a `uses_neighbours` model's documents are paired along, from the document graph (the same
        graph unless the model derives its own, e.g. SNUH's spanning trees); drawn from `seed`."""
        return graph

    def end_epoch(self) -> None:
        """KL weight rises by beta * anneal_step (cap beta), decoder noise falls by anneal_step (floor); with
        anneal_step 0 both stay where __init__ put them (beta, the floor)."""
        self.epochs_done += 1
        self._apply_schedule()

    def _apply_schedule(self) -> None:
        """KL weight and decoder noise for `epochs_done` (0 before training: weight 0, noise 1, unless
        anneal_step is 0, which means no annealing: beta and the floor from the first step)."""
        progress = self.epochs_done.item() * self.anneal_step if self.anneal_step else 1.0
        self.kl_weight.fill_(self.config.beta * min(1.0, progress))
        self.noise_scale.fill_(max(self.noise_floor, 1.0 - progress))

    def _dropout_mask(self, shape, device, generator) -> Tensor:
        keep = 1.0 - self.config.dropout
        return (draw_uniform(shape, device, self.thresholds.dtype, generator) < keep).to(
            self.thresholds.dtype
        ) / keep

    # ---- codes --------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """[n, bits] real-valued embedding (eval semantics: no dropout, no noise)."""
        raise NotImplementedError

    def calibrate(self, train_embeddings: Tensor) -> None:
        """Fit thresholds on training-set embeddings; default: keep the fixed ones."""

    def fit_closed_form(self, features: sp.csr_matrix, graph: sp.csr_matrix | None = None) -> None:
        """Fit a model that learns without gradient steps (`trainable = False`), once, on the train split's
        TF-IDF rows (float32 CSR, [n_docs, n_features]); the fit only fills buffers created in __init__, so
        the weights keep the shapes `create_model(config, n_features)` gives. `graph`: the document graph of
        those rows for a model that `uses_graph` (else searched by the model itself). Default: nothing to fit
        (LSH)."""

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """[n, bits] bool hash codes: embed(x) > thresholds."""
        return self.embed(x) > self.thresholds
