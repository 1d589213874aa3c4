"""The document graph for training: searched once per corpus, cached beside its shards, and sampled into each batch.

`cached_graph(shards, k, kind)` returns the train split's graph (models/graph.py) for any k and kind from one
cached search: the file holds each document's directed neighbour list, sorted, at least LIST_WIDTH wide, so the
graph of any k up to that width (STH's and every -nbr model's, knn or mutual) is its first k columns made
symmetric. The file is keyed by the shards' content hash, the search method and the width; a search for a wider
k writes a wider file that then serves every smaller k. Every trial, ablation cell and rerun on the same corpus
reads it instead of searching again; a lock makes concurrent trials wait for the one searching. It lives in
SHARDS/graphs/ when the shards are a local folder that can be written, else in $CORRHASH_CACHE/graphs (default
~/.cache/corrhash/graphs). The file is an .npz of plain arrays (no pickle), written to a temporary name and
renamed. `run_blocks` spreads the search's blocks (runs/graph_build.py runs them as Ray tasks).

`NeighbourPairs` wraps the rows an epoch trains on: each batch comes with one neighbour row per document, drawn
uniformly from its neighbours on the device with the run's generator (reproducible, checkpointed with it).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from filelock import FileLock

from corrhash.atomic import atomic_open
from corrhash.data.device_csr import DeviceCSR
from corrhash.data.shards import Split, TfidfShards
from corrhash.data.sources import cache_dir
from corrhash.errors import ConfigError, DataError
from corrhash.log import log
from corrhash.data.stream import ShardStream
from corrhash.models import ModelConfig, model_class
from corrhash.models.graph import BlockRunner, first_k, neighbours, resolved_method, run_here, symmetric_graph

GRAPH_FORMAT = 2
"""Bumped when what a cached graph file holds changes: older files are then built again, not misread."""
LIST_WIDTH = 25
"""Neighbour lists are searched at least this wide, so one search serves every k up to it (STH's tuned k too)"""


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


def graph_path(shards: TfidfShards, width: int, method: str) -> Path:
    """The cached lists of the train split, `width` wide, searched by `method` (resolved, not auto)."""
    return graph_folder(shards) / f"{shards.content_hash[:16]}-train-{method}-w{width}-v{GRAPH_FORMAT}.npz"


def _widest_cached(shards: TfidfShards, k: int, method: str) -> Path | None:
    """The narrowest cached file of this corpus and method whose lists are at least k wide."""
    pattern = re.compile(rf"{shards.content_hash[:16]}-train-{method}-w(\d+)-v{GRAPH_FORMAT}\.npz")
    widths = [int(match.group(1)) for path in graph_folder(shards).iterdir()
              if (match := pattern.fullmatch(path.name))]
    fitting = [w for w in widths if w >= k]
    return graph_path(shards, min(fitting), method) if fitting else None


@dataclass
class GraphInfo:
    path: Path
    built: bool
    """False when the lists were read from the cache."""
    seconds: float
    """The search's time when built (the time recorded in the file when read)."""
    method: str
    edges: int
    search: dict = field(default_factory=dict)
    """What the search chose and measured (the pruned search's index terms, candidates and sampled recall)."""


def cached_lists(shards: TfidfShards, k: int, train: Split | None = None, method: str = "auto",
                 run_blocks: BlockRunner = run_here, search: bool = True) -> tuple[np.ndarray, np.ndarray, GraphInfo]:
    """The train split's directed neighbour lists ([n, width >= k] ids and cosines, sorted) from the cache,
    searched there first if missing (`search=False`: a named error instead). `train`: the split already in
    memory (else it is read)."""
    n_train = sum(shards.rows_in(path) for path in shards.files("train"))
    method = resolved_method(method, n_train)
    folder = graph_folder(shards)
    with FileLock(str(folder / f"{shards.content_hash[:16]}-train-{method}.lock")):
        path = _widest_cached(shards, k, method)
        if path is not None:
            ids, sims, meta = _read(path, n_train)
            log(f"document graph: reused {path} ({method} search, lists {ids.shape[1]} wide)")
            return ids, sims, GraphInfo(path, False, float(meta.get("seconds", 0.0)), method, 0,
                                        meta.get("search", {}))
        width = max(k, LIST_WIDTH)
        if not search:
            raise ConfigError(f"{shards.root}: no cached document graph {width} wide ({method} search) for this "
                              f"streamed train split; search it first where the split's rows fit once (about 16 "
                              f"bytes per non-zero): python jobs/graph.py --data {shards.root} --neighbours {width}"
                              f"{'' if method == 'exact' else ' --search ' + method} (--ray to spread it)")
        train = train if train is not None else shards.split("train")
        log(f"document graph: searching the {width} nearest of each of {len(train)} train documents ({method})")
        started = time.perf_counter()
        ids, sims, search = neighbours(train.features, width, method, run_blocks=run_blocks)
        seconds = time.perf_counter() - started
        path = graph_path(shards, width, method)
        _write(path, ids, sims, {"width": width, "method": method, "content_hash": shards.content_hash,
                                 "seconds": seconds, "format": GRAPH_FORMAT, "search": search})
        log(f"document graph: searched in {seconds:.1f} s, cached as {path}")
        return ids, sims, GraphInfo(path, True, seconds, method, 0, search)


def cached_graph(shards: TfidfShards, k: int, kind: str, train: Split | None = None, method: str = "auto",
                 run_blocks: BlockRunner = run_here, search: bool = True) -> tuple[sp.csr_matrix, GraphInfo]:
    """The train split's symmetric graph of k neighbours and `kind` (float32 CSR [n_train, n_train]), from the
    cached lists (`cached_lists`)."""
    ids, sims, info = cached_lists(shards, k, train, method, run_blocks, search)
    graph = symmetric_graph(*first_k(ids, sims, k), kind).astype(np.float32)
    info.edges = graph.nnz
    log(f"document graph: k {k}, {kind}: {graph.nnz} edges")
    return graph, info


def _write(path: Path, ids: np.ndarray, sims: np.ndarray, meta: dict) -> None:
    with atomic_open(path) as handle:
        np.savez(handle, ids=ids.astype(np.int32), sims=sims.astype(np.float32),
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _read(path: Path, n_train: int) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as saved:
            ids, sims = saved["ids"].astype(np.int64), saved["sims"]
            meta = json.loads(saved["meta"].tobytes())
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read the cached document graph ({exc}); delete it to build it again") from exc
    if ids.shape != sims.shape or ids.shape[0] != n_train or ids.min(initial=-1) < -1 \
            or ids.max(initial=-1) >= n_train:
        raise DataError(f"{path}: cached graph lists are {ids.shape[0]} rows (ids up to {ids.max(initial=-1)}), "
                        f"the train split has {n_train} documents; delete it to build it again")
    return ids, sims, meta


@dataclass
class NeighbourSource:
    """What training pairs batches with: the graph over the whole train split, the whole split's rows (where the
    rows trained on are a share of it) and each trained row's id in the whole split."""

    graph: sp.csr_matrix
    documents: Split | None = None
    """The whole train split when training on a share (a distributed rank); None: the trained rows are it."""
    share_rows: np.ndarray | None = None
    store: object | None = None
    """For a streamed split: the RowStore neighbour rows are read from (train/streamed_pairs.py)."""


def neighbour_source(shards: TfidfShards, config: ModelConfig, train: Split | ShardStream | None = None,
                     share_paths: list | None = None) -> NeighbourSource | None:
    """For a model that `uses_graph`, the cached graph for `config` (its k and kind) and, for a rank training on
    `share_paths`, the whole split and the share's row ids in it; for a streamed split, the graph (which must be
    cached: `jobs/graph.py`) and the row store its neighbour rows are read from. None for any other model, and for
    STH on a stream (it loads the split whole to fit)."""
    model = model_class(config.name)
    if not model.uses_graph or (isinstance(train, ShardStream) and not model.uses_neighbours):
        return None
    if isinstance(train, ShardStream):
        from corrhash.train.streamed_pairs import row_store  # it imports this module: imported here

        graph, _ = cached_graph(shards, config.neighbours, config.graph, method=config.graph_search, search=False)
        return NeighbourSource(graph, store=row_store(shards))
    whole = train if share_paths is None else shards.split("train")
    graph, _ = cached_graph(shards, config.neighbours, config.graph, whole, config.graph_search)
    if share_paths is None:
        return NeighbourSource(graph)
    files = shards.files("train")
    starts = np.cumsum([0, *(shards.rows_in(path) for path in files)])
    position = {str(path): i for i, path in enumerate(files)}
    rows = [np.arange(starts[position[str(p)]], starts[position[str(p)] + 1]) for p in share_paths]
    return NeighbourSource(graph, whole, np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))


class NeighbourPairs:
    """`rows`' training batches, each paired with one sampled neighbour row per document: what `run_epoch`
    iterates for a model that `uses_neighbours`. `weighted`: a neighbour is drawn in proportion to its edge's
    weight, and each batch also carries each document's pair scale, half its weighted degree (a model that
    `pairs_weighted`, SNUH); else uniformly."""

    def __init__(self, rows: DeviceCSR, source: NeighbourSource, weighted: bool = False):
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
        self._hold_graph(graph, weighted, device)
        self.shape = rows.shape

    def _hold_graph(self, graph: sp.csr_matrix, weighted: bool, device) -> None:
        self.crow = torch.from_numpy(graph.indptr.astype(np.int64)).to(device)
        self.col = torch.from_numpy(graph.indices.astype(np.int64)).to(device)
        self.weighted = weighted
        if weighted:  # running sums of the edge weights, row after row: a weighted draw is one searchsorted
            self.cumulative = torch.from_numpy(np.concatenate([[0.0], np.cumsum(graph.data, dtype=np.float64)]))
            self.cumulative = self.cumulative.to(device)

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: torch.Tensor, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(ids in the whole split of one drawn neighbour per trained row `index`, bool: has one, and for a
        weighted graph each row's pair scale: half its weighted degree, 0 without a neighbour)."""
        nodes = index if self.share_rows is None else self.share_rows[index]
        start, degree = self.crow[nodes], self.crow[nodes + 1] - self.crow[nodes]
        uniform = torch.rand(len(nodes), generator=generator, device=generator.device).to(start.device)
        has = degree > 0
        scale = None
        if self.weighted:
            low, high = self.cumulative[start], self.cumulative[start + degree]
            target = low + uniform.to(low.dtype) * (high - low)
            offset = torch.searchsorted(self.cumulative, target, right=True) - 1 - start
            scale = (0.5 * (high - low)).float()
        else:
            offset = (uniform * degree).long()
        offset = torch.minimum(offset.clamp(min=0), (degree - 1).clamp(min=0))
        picked = self.col[(start + offset).clamp(max=max(len(self.col) - 1, 0))] if len(self.col) else nodes
        return torch.where(has, picked, nodes), has, scale

    def batches(self, generator: torch.Generator, batch_size: int, steps: int | None = None):
        for index in self.rows.index_batches(generator, batch_size, steps):
            neighbour, has, scale = self.sample(index, generator)
            pair = (self.rows.rows(index), self.database.rows(neighbour, keep=has))
            yield pair if scale is None else (*pair, scale)
