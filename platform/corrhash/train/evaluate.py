"""How a model is scored: precision@k of query codes against database codes, in one process or many.

In one process the database is a whole split. On N Ray Train workers (`shares` given) each rank
holds its share of the train split: the share's embeddings are all-gathered in rank order, so every
rank calibrates the same thresholds; rank 0 scores the queries and broadcasts the two numbers, so
early stopping decides the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from corrhash.data.device_csr import DeviceCSR
from corrhash.data.shards import Split
from corrhash.data.stream import ShardStream, rows_of
from corrhash.models import HashModel
from corrhash.retrieval import pack_codes, precision_at_k, search_backend

EVAL_CHUNK = 4096


@dataclass(frozen=True)
class Score:
    """Mean precision@k over the queries: tie-aware (model selection uses it) and ties by database order."""

    k: int
    tie_aware: float
    ordered: float


@dataclass(frozen=True)
class Shares:
    """This worker's place among `world` ranks that each hold a share of the database split."""

    rank: int
    world: int
    database_labels: np.ndarray
    """Every rank's database labels, concatenated in rank order."""

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's [n_r, d] tensor, concatenated in rank order (shares may differ in size)."""
        size = torch.tensor([local.shape[0]], device=local.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, local.shape[1]), dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])


@torch.no_grad()
def embed_all(model: HashModel, rows: DeviceCSR | ShardStream, device: torch.device) -> torch.Tensor:
    return torch.cat([model.embed(chunk.to(device)) for chunk in rows.chunks(EVAL_CHUNK)])


class Evaluator:
    """precision@k of `queries` against `database` codes (thresholds calibrated on the database first).

    With `shares`, `database` is this rank's share and `queries` is needed on rank 0 only. Either may be streamed
    from its shard files (`data/stream.py`): only the embeddings (4 bytes per bit per document) are then held."""

    def __init__(self, database: Split | ShardStream, queries: Split | ShardStream | None, device: torch.device, k: int = 100,
                 shares: Shares | None = None):
        self.database, self.queries, self.device, self.k, self.shares = database, queries, device, k, shares
        self.database_labels = shares.database_labels if shares else database.labels
        self.database_rows = rows_of(database, device)
        self.query_rows = rows_of(queries, device) if queries is not None else None

    @torch.no_grad()
    def codes(self, model: HashModel) -> tuple[np.ndarray, np.ndarray | None]:
        """Packed (database, query) codes; query codes are None on a rank without queries."""
        was_training = model.training
        model.eval()
        database = embed_all(model, self.database_rows, self.device)
        if self.shares:
            database = self.shares.gather(database)
        model.calibrate(database)  # with shares: the same embeddings on every rank, so the same thresholds
        queries = embed_all(model, self.query_rows, self.device) if self.query_rows is not None else None
        model.train(was_training)
        return (pack_codes(database > model.thresholds),
                pack_codes(queries > model.thresholds) if queries is not None else None)

    def __call__(self, model: HashModel) -> Score:
        database, queries = self.codes(model)
        values = torch.zeros(2, dtype=torch.float64, device=self.device)
        if queries is not None:
            precision = precision_at_k(queries, self.queries.labels, database, self.database_labels, k=self.k,
                                       backend=search_backend(self.device))
            values[0], values[1] = precision.tie_aware, precision.ordered
        if self.shares:
            dist.broadcast(values, src=0)
        return Score(self.k, float(values[0]), float(values[1]))
