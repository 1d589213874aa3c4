"""The shared epoch loop on Ray Train workers: DDP gradients, shard files assigned by rank.

Each worker reads only its share of the train shards (`paths[rank::world]`), keeps it on its
device for all epochs, and takes the same number of steps per epoch as every other worker (DDP
needs matching collectives). Validation uses the whole val split against the whole train split:
every worker embeds its share, the embeddings are all-gathered, rank 0 scores precision@k and
broadcasts it so that early stopping decides the same on every rank.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from corrhash.data import TfidfShards
from corrhash.data.device_csr import place
from corrhash.models import HashModel, ModelConfig
from corrhash.retrieval import PrecisionAtK, pack_codes, precision_at_k
from corrhash.train import checkpoint as checkpoint_format
from corrhash.train.config import TrainConfig
from corrhash.train.loop import embed_all, fit, new_state

def _all_gather_rows(local: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate every rank's [n_r, d] tensor in rank order (shares may differ in size)."""
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, local.shape[1]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])


class DistributedEvaluator:
    """precision@k of the full val split against the train codes gathered from every worker."""

    def __init__(self, share, database_labels: np.ndarray, queries, device: torch.device, k: int,
                 rank: int, world: int):
        self.share_rows = place(share, device)
        self.query_rows = place(queries, device) if queries is not None else None
        self.database_labels = database_labels
        self.query_labels = queries.labels if queries is not None else None
        self.device, self.k, self.rank, self.world = device, k, rank, world

    @torch.no_grad()
    def __call__(self, model: HashModel) -> PrecisionAtK:
        was_training = model.training
        model.eval()
        database = _all_gather_rows(embed_all(model, self.share_rows, self.device), self.world)
        model.calibrate(database)  # same embeddings on every rank → same thresholds
        result = torch.zeros(2, dtype=torch.float64, device=self.device)
        if self.rank == 0:
            queries = embed_all(model, self.query_rows, self.device)
            backend = "torch" if self.device.type == "cuda" else "faiss"
            precision = precision_at_k(pack_codes(queries > model.thresholds), self.query_labels,
                                       pack_codes(database > model.thresholds), self.database_labels,
                                       k=self.k, backend=backend)
            result[0], result[1] = precision.tie_aware, precision.ordered
        dist.broadcast(result, src=0)
        model.train(was_training)
        empty = np.zeros(0)
        return PrecisionAtK(self.k, float(result[1]), float(result[0]), empty, empty)


def train_worker(config: dict) -> None:
    """Ray Train `train_loop_per_worker`. `config`: data, model, train, mlflow (uri, run_id) or None."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu" and config.get("threads_per_worker"):
        torch.set_num_threads(int(config["threads_per_worker"]))
    model_config = ModelConfig.from_dict(config["model"])
    train_config = TrainConfig.from_dict({**config["train"], "device": str(device)})
    # A per-worker batch keeps the global batch (and so the optimisation) the same for any N.
    worker_batch = max(1, math.ceil(train_config.batch_size / world))
    train_config = TrainConfig.from_dict({**train_config.to_dict(), "batch_size": worker_batch})

    shards = TfidfShards(config["data"])
    paths = shards.shard_paths("train")
    if len(paths) < world:
        raise ValueError(f"{config['data']}: {len(paths)} train shard file(s) for {world} workers; "
                         "prepare with a smaller --rows-per-shard")
    share = shards.split("train", shards=paths[rank::world])
    database_labels = np.concatenate([shards.labels("train", paths[r::world]) for r in range(world)])
    rows_per_rank = [sum(e["rows"] for e in shards.manifest["splits"]["train"]["shards"][r::world])
                     for r in range(world)]
    steps = math.ceil(max(rows_per_rank) / worker_batch)
    evaluator = DistributedEvaluator(share, database_labels, shards.split("val") if rank == 0 else None,
                                     device, train_config.eval_k, rank, world)

    state = new_state(model_config, train_config, shards.n_features, device)
    state.generator.manual_seed(train_config.seed * 1000 + rank)  # distinct noise and order per rank
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            checkpoint_format.restore(Path(directory), state, rank, device)

    mlflow_client = None
    if rank == 0 and config.get("mlflow"):
        from mlflow.tracking import MlflowClient

        from corrhash.tracking.runs import log_metrics
        mlflow_client = MlflowClient(config["mlflow"]["uri"])

    def on_epoch(metrics: dict, state) -> bool:
        metrics = {**metrics, "world_size": world, "docs_per_s": metrics.get("docs_per_s", 0.0) * world}
        with tempfile.TemporaryDirectory() as directory:
            directory = Path(directory)
            if rank == 0 and mlflow_client is not None:
                log_metrics(mlflow_client, config["mlflow"]["run_id"], metrics, step=metrics["epoch"])
            checkpoint_format.save(directory, state, rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))
        return False

    wrap = None
    if world > 1 and state.model.trainable:
        def wrap(model):
            ids = [device.index] if device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    fit(model_config, train_config, share, evaluator=evaluator, on_epoch=on_epoch, state=state,
        wrap_model=wrap, batches_per_epoch=steps)

