"""The one worker function: a Ray Train worker and a Tune trial run the same code.

Each rank reads only its share of the train shard files (`paths[rank::world]`; a trial is rank 0
of 1) and keeps it on its device for all epochs (or streams it from the files, `data/stream.py`).
A rank's batch is its share's part of the global batch (`rank_batches`), so every rank passes over
its share in about the steps one worker takes over the whole split, and the gradients are averaged
weighted by batch (`share_weighted_mean`): the global batch, the steps per epoch and how often each
document is seen are one worker's for any number of workers, also when the shard files do not
split evenly (3 files on 2 workers). All ranks take the same number of steps (DDP needs matching
collectives). Every epoch is a checkpoint (`train/checkpoint.py`) reported through the session;
MLflow is the driver's business.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from corrhash.data import TfidfShards
from corrhash.data.stream import open_split
from corrhash.launch.live import EpochExporter
from corrhash.runs.session import TrainSession, TuneSession
from corrhash.runs.spec import RunSpec
from corrhash.train import checkpoint
from corrhash.train.evaluate import Evaluator, Shares
from corrhash.log import log
from corrhash.train.loop import epoch_line, fit, new_state, selection_queries
from corrhash.train.neighbours import neighbour_source

SHOWN_FIRST = ("val_precision", "best_val_precision", "loss", "epoch")
"""The metrics a report leads with: Ray's trial table shows the first four."""


def run_worker(spec: RunSpec, session: TrainSession | TuneSession) -> None:
    rank, world = session.rank, session.world
    device = session.device(spec.train.device)
    if device.type == "cpu":
        torch.set_num_threads(spec.threads)
    shards = TfidfShards(spec.data)
    paths = shards.shard_paths("train")
    rows_per_rank = [sum(e["rows"] for e in shards.manifest["splits"]["train"]["shards"][r::world])
                     for r in range(world)]
    batches = rank_batches(spec.train.batch_size, rows_per_rank)
    train_config = replace(spec.train, device=str(device), batch_size=batches[rank])
    share = open_split(shards, "train", train_config.stream, train_config.stream_buffer, paths[rank::world])
    steps = max(math.ceil(rows / batch) for rows, batch in zip(rows_per_rank, batches))
    val = open_split(shards, "val", train_config.stream, train_config.stream_buffer) if rank == 0 else None
    shares = None
    if world > 1:
        labels = np.concatenate([shards.labels("train", paths[r::world]) for r in range(world)])
        shares = Shares(rank, world, labels)
    queries = selection_queries(val, train_config) if val is not None else None
    evaluator = Evaluator(share, queries, device, train_config.eval_k, shares)

    state = new_state(spec.model, train_config, shards.n_features, device)
    if world > 1:
        state.generator.manual_seed(train_config.seed * 1000 + rank)  # distinct noise and batch order per rank
    resume = session.checkpoint()
    if resume:
        with resume.as_directory() as directory:
            checkpoint.restore(Path(directory), state, rank, device)

    export = EpochExporter(session.job, session.run, rank, spec.model.name)

    def on_epoch(metrics: dict, state) -> bool:
        export(metrics)  # this rank's own throughput; the report below carries the cluster's
        # In place: `metrics` is also the epoch's record in the checkpoint's history, from which the epochs MLflow
        # missed are recorded when the job ends, so it carries the run's constants as the live report does.
        metrics.update(world_size=world, docs_per_s=metrics.get("docs_per_s", 0.0) * world)
        # Ray's console (its default output engine, which ignores a CLIReporter's columns) shows the first four
        # metrics of a result: put first what the search selects on.
        metrics = {**{key: metrics[key] for key in SHOWN_FIRST if key in metrics}, **metrics}
        if rank == 0 and isinstance(session, TrainSession):  # a Tune trial's epochs are the trial table's rows
            log(epoch_line(metrics, spec.train.eval_k))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint.save(Path(directory), state, rank)
            session.report(metrics, directory)
        return False

    wrap = None
    if world > 1 and state.model.trainable:
        def wrap(model):
            ids = [device.index] if device.type == "cuda" else None
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
            if len(set(batches)) > 1:  # equal batches: DDP's own mean is the same weighting
                ddp.register_comm_hook(None, share_weighted_mean(batches[rank] / sum(batches)))
            return ddp
    # A closed-form fit (SpH, STH) needs the whole train split, not a share: every rank fits the same model
    # from the same seed, and the evaluator still gathers the shares' codes as the database.
    fit_rows = shards.split("train") if world > 1 and not state.model.trainable else share
    # A model that learns from the document graph reads it from the corpus's cache (built there once, by whichever
    # trial or rank gets there first): neighbours may be in any rank's share, so a share is paired with the whole split.
    neighbours = neighbour_source(shards, spec.model, share, paths[rank::world] if world > 1 else None)
    fit(spec.model, train_config, fit_rows, evaluator=evaluator, on_epoch=on_epoch, state=state, wrap_model=wrap,
        batches_per_epoch=steps, neighbours=neighbours)


def rank_batches(batch_size: int, rows_per_rank: list[int]) -> list[int]:
    """Each rank's batch: its rows' part of the global `batch_size`, at least 1. Equal shares give
    ceil(batch / world) each; shares of 1000 and 500 rows with a batch of 20 give 14 and 7, so both ranks pass
    over their share in 72 steps (one worker: 75), where equal batches of 10 took 100 steps an epoch and saw the
    smaller share's documents twice."""
    total = max(sum(rows_per_rank), 1)
    return [max(1, math.ceil(batch_size * rows / total)) for rows in rows_per_rank]


def share_weighted_mean(weight: float):
    """A DDP communication hook: the all-reduced gradient is the sum of each rank's gradient times `weight` (its
    batch's part of the global batch) instead of DDP's plain mean, so that a document counts the same on every
    rank when batches differ in size. The documented default hook with `div_(world)` replaced."""
    import torch.distributed as dist

    def hook(process_group, bucket):
        tensor = bucket.buffer().mul_(weight)
        group = process_group if process_group is not None else dist.group.WORLD
        return dist.all_reduce(tensor, group=group, async_op=True).get_future().then(lambda fut: fut.value()[0])

    return hook


def train_loop(config: dict) -> None:
    """Ray Train's `train_loop_per_worker`; `config` is `RunSpec.to_dict()`."""
    run_worker(RunSpec.from_dict(config), TrainSession())


def tune_trial(config: dict, spec: dict, job: str) -> None:
    """A Tune function trainable: `config` holds only the tuned values, `spec` comes from `tune.with_parameters`."""
    run_worker(RunSpec.from_dict(spec).with_trial(config), TuneSession(job))
