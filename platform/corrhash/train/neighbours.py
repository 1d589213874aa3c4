"""The document graph for training: built once per corpus, cached beside its shards, and sampled into each batch.

`cached_graph(shards, k, kind)` returns the train split's graph (models/graph.py). The file is keyed by the
shards' content hash, k, kind and search method, so every trial, ablation cell and rerun on the same corpus reads
the same file instead of searching again; a lock makes concurrent trials wait for the one building it. It lives in
SHARDS/graphs/ when the shards are a local folder that can be written, else in $CORRHASH_CACHE/graphs (default
~/.cache/corrhash/graphs). The file is an .npz of plain arrays (no pickle), written to a temporary name and
renamed.

`NeighbourPairs` wraps the rows an epoch trains on: each batch comes with one neighbour row per document, drawn
uniformly from its neighbours on the device with the run's generator (reproducible, checkpointed with it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from filelock import FileLock

from corrhash.atomic import atomic_open
from corrhash.data.device_csr import DeviceCSR
from corrhash.data.shards import Split, TfidfShards
from corrhash.data.sources import cache_dir
from corrhash.errors import DataError
from corrhash.log import log
from corrhash.data.stream import ShardStream
from corrhash.models import ModelConfig, model_class
from corrhash.models.graph import knn_graph, resolved_method

GRAPH_FORMAT = 1
"""Bumped when what a cached graph file holds changes: older files are then built again, not misread."""


def graph_folder(shards: TfidfShards) -> Path:
    """SHARDS/graphs for a writable local shards folder, else the user cache's graphs/."""
    if isinstance(shards.root, Path):
        folder = shards.root / "graphs"
        try:
            folder.mkdir(exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            pass
    folder = cache_dir() / "graphs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def graph_path(shards: TfidfShards, k: int, kind: str, method: str) -> Path:
    return graph_folder(shards) / f"{shards.content_hash[:16]}-train-k{k}-{kind}-{method}-v{GRAPH_FORMAT}.npz"


@dataclass
class GraphInfo:
    path: Path
    built: bool
    """False when the graph was read from the cache."""
    seconds: float
    """The search's and symmetrisation's time when built (the time recorded in the file when read)."""
    method: str
    edges: int


def cached_graph(shards: TfidfShards, k: int, kind: str, train: Split | None = None,
                 method: str = "auto") -> tuple[sp.csr_matrix, GraphInfo]:
    """The train split's symmetric graph (float32 CSR [n_train, n_train]) from the cache, built there first if
    missing. `train`: the split already in memory (else it is read)."""
    n_train = sum(shards.rows_in(path) for path in shards.files("train"))
    method = resolved_method(method, n_train)
    path = graph_path(shards, k, kind, method)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            graph, seconds = _read(path, n_train)
            info = GraphInfo(path, False, seconds, method, graph.nnz)
            log(f"document graph: reused {path} ({graph.nnz} edges, k {k}, {kind}, {method})")
            return graph, info
        train = train if train is not None else shards.split("train")
        log(f"document graph: building the {method} {kind} graph of {len(train)} train documents, k {k}")
        started = time.perf_counter()
        graph = knn_graph(train.features, k, kind, method).astype(np.float32)  # as stored: built = reused
        seconds = time.perf_counter() - started
        _write(path, graph, {"k": k, "kind": kind, "method": method, "content_hash": shards.content_hash,
                             "seconds": seconds, "format": GRAPH_FORMAT})
        log(f"document graph: built in {seconds:.1f} s, {graph.nnz} edges, cached as {path}")
        return graph, GraphInfo(path, True, seconds, method, graph.nnz)


def _write(path: Path, graph: sp.csr_matrix, meta: dict) -> None:
    with atomic_open(path) as handle:
        np.savez(handle, indptr=graph.indptr.astype(np.int64), indices=graph.indices.astype(np.int64),
                 data=graph.data.astype(np.float32), shape=np.array(graph.shape, dtype=np.int64),
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _read(path: Path, n_train: int) -> tuple[sp.csr_matrix, float]:
    try:
        with np.load(path, allow_pickle=False) as saved:
            shape = tuple(int(v) for v in saved["shape"])
            graph = sp.csr_matrix((saved["data"], saved["indices"], saved["indptr"]), shape=shape)
            meta = json.loads(saved["meta"].tobytes())
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read the cached document graph ({exc}); delete it to build it again") from exc
    if shape != (n_train, n_train):
        raise DataError(f"{path}: cached graph is {shape[0]} x {shape[1]}, the train split has {n_train} documents; "
                        "delete it to build it again")
    return graph, float(meta.get("seconds", 0.0))


@dataclass
class NeighbourSource:
    """What training pairs batches with: the graph over the whole train split, the whole split's rows (where the
    rows trained on are a share of it) and each trained row's id in the whole split."""

    graph: sp.csr_matrix
    documents: Split | None = None
    """The whole train split when training on a share (a distributed rank); None: the trained rows are it."""
    share_rows: np.ndarray | None = None


def neighbour_source(shards: TfidfShards, config: ModelConfig, train: Split | ShardStream | None = None,
                     share_paths: list | None = None) -> NeighbourSource | None:
    """For a model that `uses_neighbours`, the cached graph for `config` (its k and kind) and, for a rank training on
    `share_paths`, the whole split and the share's row ids in it; None for any other model, or a streamed split
    (which `fit` refuses for such a model, with the reason)."""
    if not model_class(config.name).uses_neighbours or isinstance(train, ShardStream):
        return None
    whole = train if share_paths is None else shards.split("train")
    graph, _ = cached_graph(shards, config.neighbours, config.graph, whole)
    if share_paths is None:
        return NeighbourSource(graph)
    files = shards.files("train")
    starts = np.cumsum([0, *(shards.rows_in(path) for path in files)])
    position = {str(path): i for i, path in enumerate(files)}
    rows = [np.arange(starts[position[str(p)]], starts[position[str(p)] + 1]) for p in share_paths]
    return NeighbourSource(graph, whole, np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))


class NeighbourPairs:
    """`rows`' training batches, each paired with one sampled neighbour row per document: what `run_epoch`
    iterates for a model that `uses_neighbours`."""

    def __init__(self, rows: DeviceCSR, source: NeighbourSource):
        device = rows.device
        graph = sp.csr_matrix(source.graph)
        if source.documents is None:
            database, share_rows = rows, None
        else:
            database = DeviceCSR(source.documents.features, device)
            share_rows = torch.from_numpy(np.asarray(source.share_rows, dtype=np.int64)).to(device)
        if graph.shape[0] != len(database):
            raise DataError(f"the document graph has {graph.shape[0]} nodes but the train split "
                            f"{len(database)} documents")
        self.rows, self.database, self.share_rows = rows, database, share_rows
        self.crow = torch.from_numpy(graph.indptr.astype(np.int64)).to(device)
        self.col = torch.from_numpy(graph.indices.astype(np.int64)).to(device)
        self.shape = rows.shape

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids in the whole split of one uniformly drawn neighbour per trained row `index`, bool: has one)."""
        nodes = index if self.share_rows is None else self.share_rows[index]
        start, degree = self.crow[nodes], self.crow[nodes + 1] - self.crow[nodes]
        uniform = torch.rand(len(nodes), generator=generator, device=generator.device).to(start.device)
        offset = torch.minimum((uniform * degree).long(), (degree - 1).clamp(min=0))
        has = degree > 0
        picked = self.col[(start + offset).clamp(max=max(len(self.col) - 1, 0))] if len(self.col) else nodes
        return torch.where(has, picked, nodes), has

    def batches(self, generator: torch.Generator, batch_size: int, steps: int | None = None):
        for index in self.rows.index_batches(generator, batch_size, steps):
            neighbour, has = self.sample(index, generator)
            yield self.rows.rows(index), self.database.rows(neighbour, keep=has)
