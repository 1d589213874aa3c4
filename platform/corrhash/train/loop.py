"""The one epoch loop. Plain processes, Ray Train workers and Tune trials all call `fit`.

What callers plug in, and why:
- `on_epoch(metrics, state)`: report/checkpoint (Ray Train), print (plain runs); return True to stop.
- `state`: a `TrainState` restored from a checkpoint, to resume where a run stopped.
- `wrap_model`: e.g. DistributedDataParallel; the loop always calls the wrapper's forward.
- `evaluator`: how validation precision is computed (`train/evaluate.py`; on N workers it gathers codes).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from corrhash.data.device_csr import DeviceCSR
from corrhash.data.shards import Split
from corrhash.data.stream import ShardStream, rows_of
from corrhash.device import resolve_device
from corrhash.errors import ConfigError, DataError
from corrhash.log import log
from corrhash.models import HashModel, ModelConfig, create_model
from corrhash.models.graph import knn_graph
from corrhash.train.config import TrainConfig
from corrhash.train.evaluate import Evaluator
from corrhash.train.neighbours import NeighbourPairs, NeighbourSource
from corrhash.train.streamed_pairs import StreamedNeighbourPairs

@dataclass
class TrainState:
    """Everything a checkpoint needs to resume exactly (annealing lives in the model's buffers)."""

    model: HashModel
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    epoch: int = 0
    best_value: float = -math.inf
    best_epoch: int = 0
    best_weights: dict = field(default_factory=dict)
    bad_epochs: int = 0
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        """Tensors, numbers and lists only: loadable with torch.load(weights_only=True)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "generator": self.generator.get_state(),
            "epoch": self.epoch, "best_value": self.best_value, "best_epoch": self.best_epoch,
            "best_weights": self.best_weights, "bad_epochs": self.bad_epochs, "history": self.history,
        }

    def load_state_dict(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        if self.optimizer and payload["optimizer"]:
            self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler and payload["scheduler"]:
            self.scheduler.load_state_dict(payload["scheduler"])
        self.generator.set_state(payload["generator"].cpu())
        for name in ("epoch", "best_value", "best_epoch", "best_weights", "bad_epochs", "history"):
            setattr(self, name, payload[name])


def new_state(model_config: ModelConfig, train_config: TrainConfig, n_features: int,
              device: torch.device) -> TrainState:
    torch.manual_seed(train_config.seed)  # weight initialisation
    model = create_model(model_config, n_features).to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(train_config.seed)
    if not model.trainable:
        return TrainState(model, None, None, generator)
    # fused Adam: one kernel for all parameters (measured ~10x faster steps on CPU than the default).
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, train_config.lr_decay_steps, train_config.lr_decay)
    return TrainState(model, optimizer, scheduler, generator)


def selection_queries(val: Split | ShardStream, train_config: TrainConfig) -> Split | ShardStream:
    """The val documents each epoch scores: all of them, or a seeded sample (`eval_queries`), so that per-epoch
    selection against a large database does not dominate the epoch."""
    return val.sample(train_config.eval_queries, train_config.seed) if train_config.eval_queries else val


@dataclass
class FitResult:
    model: HashModel
    """The model with the best validation weights restored."""
    best_epoch: int
    best_value: float
    """Validation precision@k (tie-aware) of the restored weights."""
    history: list[dict]
    """One metrics dict per epoch."""
    seconds: float


def run_epoch(forward: nn.Module, state: TrainState, rows: DeviceCSR | ShardStream | NeighbourPairs, batch_size: int,
              device: torch.device, batches: int | None = None, grad_clip: float = 0.0) -> dict:
    """One pass over `rows` (held on a device, streamed from shard files, or paired with graph neighbours) in a
    seeded random order; returns the mean loss terms per document.

    `batches` fixes the number of steps (distributed workers must all take the same number); `grad_clip` > 0 clips
    the gradients' global norm before each step."""
    model, generator = state.model, state.generator
    model.train()
    steps = batches if batches is not None else math.ceil(len(rows) / batch_size)
    names = ("loss", "recon", "kl", "neighbour") if isinstance(rows, NeighbourPairs) else ("loss", "recon", "kl")
    # Per-step terms stay on the device (no sync per step); they are checked once, at the epoch's end.
    terms_per_step = torch.zeros(steps, len(names), device=device)
    sizes = torch.zeros(steps, 1, device=device)
    for step, batch in enumerate(rows.batches(generator, batch_size, steps)):
        if isinstance(batch, tuple):  # (documents, one sampled graph neighbour of each[, each pair's scale])
            x = batch[0].to(device)
            scale = {"pair_scale": batch[2].to(device)} if len(batch) == 3 else {}
            terms = forward(x, generator=generator, neighbours=batch[1].to(device), **scale)
        else:
            x = batch.to(device)
            terms = forward(x, generator=generator)
        state.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        state.optimizer.step()
        state.scheduler.step()
        terms_per_step[step] = torch.stack([terms[name] for name in names]).detach()
        sizes[step] = x.shape[0]
    finite = torch.isfinite(terms_per_step).all(dim=1)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0])
        values = ", ".join(f"{name} {value}" for name, value in zip(names, terms_per_step[step].tolist()))
        raise DataError(f"training stopped: non-finite loss at epoch {state.epoch + 1}, step {step + 1} of {steps} "
                        f"({values}); check the shards for NaN/inf values and lower --lr; no model was saved")
    docs = int(sizes.sum())
    means = ((terms_per_step * sizes).sum(dim=0) / max(docs, 1)).tolist()
    return {**dict(zip(names, means)), "docs": docs}


def train_epochs(forward: nn.Module, state: TrainState, rows: DeviceCSR | ShardStream | NeighbourPairs,
                 batch_size: int, device: torch.device, epochs: int, batches: int | None = None,
                 grad_clip: float = 0.0) -> Iterator[dict]:
    """Up to `epochs` epochs of `run_epoch`, each followed by the model's end of epoch (annealing) and counted in
    `state.epoch`: what `fit` and the benchmarks run. Yields each epoch's mean loss terms with `epoch` and `seconds`
    (the pass alone, which ends on a read of its results from the device). A generator: an epoch runs when the
    next one is asked for, so a caller stops training by not asking."""
    for _ in range(epochs):
        started = time.perf_counter()
        metrics = run_epoch(forward, state, rows, batch_size, device, batches, grad_clip)
        seconds = time.perf_counter() - started
        state.model.end_epoch()
        state.epoch += 1
        yield {**metrics, "epoch": state.epoch, "seconds": seconds}


def fit(model_config: ModelConfig, train_config: TrainConfig, train: Split | ShardStream, evaluator: Evaluator | None = None,
        val: Split | None = None, on_epoch: Callable[[dict, TrainState], bool | None] | None = None,
        state: TrainState | None = None, wrap_model: Callable[[nn.Module], nn.Module] | None = None,
        batches_per_epoch: int | None = None, neighbours: NeighbourSource | None = None) -> FitResult:
    """Train with early stopping on validation precision@k; the best weights are restored.

    Pass `val` (evaluated against `train` as the database) or a ready `evaluator`. A model that `uses_neighbours`
    trains on batches paired with graph neighbours: from `neighbours` (the cached graph, `train/neighbours.py`),
    or from a graph of `train` searched here (exact up to models/graph.EXACT_MAX_DOCS documents, not cached)."""
    started = time.monotonic()
    device = resolve_device(train_config.device)
    if state is None:
        state = new_state(model_config, train_config, train.n_features, device)
    if evaluator is None:
        if val is None:
            raise ValueError("fit needs `val` or an `evaluator` for model selection")
        evaluator = Evaluator(train, selection_queries(val, train_config), device, train_config.eval_k)
    model = state.model
    if not model.trainable:  # no epochs: fit in closed form (SpH, STH; LSH has nothing to fit), score once
        if isinstance(train, ShardStream):
            if train_config.stream == "always":
                raise ConfigError(f"--stream always: {model_config.name} fits in closed form on the whole train "
                                  "split at once, which cannot be streamed; use --stream auto or never")
            log(f"{model_config.name} fits in closed form on the whole train split: loading it whole")
            train = train.shards.split(train.name, train.paths)
        model.fit_closed_form(train.features, neighbours.graph if neighbours is not None else None)
        precision = evaluator(model)
        record = {"epoch": 0, "val_precision": precision.tie_aware, "val_precision_ordered": precision.ordered,
                  "best_epoch": 0, "best_val_precision": precision.tie_aware}
        state.best_value, state.history = precision.tie_aware, [record]
        state.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(record, state)
        return FitResult(model, 0, precision.tie_aware, [record], time.monotonic() - started)

    forward = wrap_model(model) if wrap_model else model
    rows = rows_of(train, device)
    if model.uses_neighbours and isinstance(train, ShardStream):
        if neighbours is None or neighbours.store is None:
            raise ConfigError(f"{model_config.name} on a streamed train split reads its documents' graph neighbours "
                              "from a row store beside the cached graph: pass the NeighbourSource of "
                              "train/neighbours.neighbour_source (the lifecycles do)")
        rows = StreamedNeighbourPairs(train, paired_along(model, neighbours, train_config.seed), device,
                                      model.pairs_weighted)
    elif model.uses_neighbours:
        if neighbours is None:
            neighbours = NeighbourSource(knn_graph(train.features, model_config.neighbours, model_config.graph,
                                                       model_config.graph_search))
        rows = NeighbourPairs(rows, paired_along(model, neighbours, train_config.seed), model.pairs_weighted)
    remaining = train_config.epochs - state.epoch if state.bad_epochs < train_config.patience else 0
    for metrics in train_epochs(forward, state, rows, train_config.batch_size, device, remaining, batches_per_epoch,
                                train_config.grad_clip):
        metrics.update(docs_per_s=metrics["docs"] / metrics["seconds"],
                       lr=state.optimizer.param_groups[0]["lr"], kl_weight=float(model.kl_weight),
                       noise_scale=float(model.noise_scale), streamed=int(isinstance(rows, (ShardStream, StreamedNeighbourPairs))))
        if state.epoch % train_config.eval_every == 0 or state.epoch == train_config.epochs:
            precision = evaluator(model)
            metrics.update(val_precision=precision.tie_aware, val_precision_ordered=precision.ordered)
            if precision.tie_aware > state.best_value:
                state.best_value, state.best_epoch, state.bad_epochs = precision.tie_aware, state.epoch, 0
                state.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                state.bad_epochs += train_config.eval_every
        metrics.update(best_epoch=state.best_epoch, best_val_precision=state.best_value)
        state.history.append(metrics)
        if (on_epoch is not None and on_epoch(metrics, state)) or state.bad_epochs >= train_config.patience:
            break
    if state.best_weights:
        model.load_state_dict(copy.deepcopy(state.best_weights))
    return FitResult(model, state.best_epoch, state.best_value, state.history, time.monotonic() - started)


def paired_along(model: HashModel, source: NeighbourSource, seed: int) -> NeighbourSource:
    """`source` with the graph the model pairs documents along (`HashModel.pairing_graph`); every rank of a
    distributed run draws the same one from the training seed."""
    graph = model.pairing_graph(source.graph, seed)
    return source if graph is source.graph else dataclasses.replace(source, graph=graph)


def epoch_line(metrics: dict, k: int) -> str:
    """One epoch's console line, the same from every launcher (a plain process, rank 0 of Ray Train, a cell)."""
    val = f"val p@{k} {metrics['val_precision']:.4f}" if "val_precision" in metrics else ""
    if "loss" not in metrics:  # an untrained model (lsh): one evaluation, no epoch
        return f"{val} (no training)"
    pairwise = f", neighbour {metrics['neighbour']:.2f}" if "neighbour" in metrics else ""
    return (f"epoch {metrics['epoch']:3d}  loss {metrics['loss']:.2f} (recon {metrics['recon']:.2f}{pairwise}, "
            f"kl {metrics['kl']:.2f} x{metrics['kl_weight']:.3f})  {metrics['docs_per_s']:.0f} docs/s  {val}  "
            f"best {metrics['best_val_precision']:.4f} @ {metrics['best_epoch']}")
