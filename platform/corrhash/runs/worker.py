"""The one worker function: a Ray Train worker and a Tune trial run the same code.

Each rank reads only its share of the train shard files (`paths[rank::world]`; a trial is rank 0
of 1), keeps it on its device for all epochs (or streams it from the files, `data/stream.py`), and takes as many steps per epoch as the rank with
the largest share (DDP needs matching collectives). The per-rank batch is ceil(batch / world), so
the global batch and the optimisation are the same for any number of workers. Every epoch is a
checkpoint (`train/checkpoint.py`) reported through the session; MLflow is the driver's business.
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


def run_worker(spec: RunSpec, session: TrainSession | TuneSession) -> None:
    rank, world = session.rank, session.world
    device = session.device(spec.train.device)
    if device.type == "cpu":
        torch.set_num_threads(spec.threads)
    train_config = replace(spec.train, device=str(device), batch_size=max(1, math.ceil(spec.train.batch_size / world)))

    shards = TfidfShards(spec.data)
    paths = shards.shard_paths("train")
    share = open_split(shards, "train", train_config.stream, train_config.stream_buffer, paths[rank::world])
    rows_per_rank = [sum(e["rows"] for e in shards.manifest["splits"]["train"]["shards"][r::world])
                     for r in range(world)]
    steps = math.ceil(max(rows_per_rank) / train_config.batch_size)
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
        metrics = {**metrics, "world_size": world, "docs_per_s": metrics.get("docs_per_s", 0.0) * world}
        if rank == 0 and isinstance(session, TrainSession):  # a Tune trial's epochs are the CLIReporter's table
            log(epoch_line(metrics, spec.train.eval_k))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint.save(Path(directory), state, rank)
            session.report(metrics, directory)
        return False

    wrap = None
    if world > 1 and state.model.trainable:
        def wrap(model):
            ids = [device.index] if device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # A closed-form fit (SpH, STH) needs the whole train split, not a share: every rank fits the same model
    # from the same seed, and the evaluator still gathers the shares' codes as the database.
    fit_rows = shards.split("train") if world > 1 and not state.model.trainable else share
    # A model that learns from the document graph reads it from the corpus's cache (built there once, by whichever
    # trial or rank gets there first): neighbours may be in any rank's share, so a share is paired with the whole split.
    neighbours = neighbour_source(shards, spec.model, share, paths[rank::world] if world > 1 else None)
    fit(spec.model, train_config, fit_rows, evaluator=evaluator, on_epoch=on_epoch, state=state, wrap_model=wrap,
        batches_per_epoch=steps, neighbours=neighbours)


def train_loop(config: dict) -> None:
    """Ray Train's `train_loop_per_worker`; `config` is `RunSpec.to_dict()`."""
    run_worker(RunSpec.from_dict(config), TrainSession())


def tune_trial(config: dict, spec: dict, job: str) -> None:
    """A Tune function trainable: `config` holds only the tuned values, `spec` comes from `tune.with_parameters`."""
    run_worker(RunSpec.from_dict(spec).with_trial(config), TuneSession(job))
