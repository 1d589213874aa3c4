"""-nbr training on a streamed train split (one too large to hold, `data/stream.py`): each batch comes from the
stream's shuffle buffer, and each of its documents' sampled graph neighbour is read by id from a row store.

The row store is the whole train split's TF-IDF rows as one CSR on local disk (`indptr.npy`, `indices.bin`
int32, `data.bin` float32), written once beside the cached graph, one shard file at a time, and memory-mapped:
a batch's neighbour rows are read from the page cache, which the kernel bounds, not from the process's memory.
What the process holds for the pairing: the symmetric graph's structure (int64 row pointers and column ids,
about 16 bytes per edge, ~2k edges per document for lists k wide) and the store's row pointers (8 bytes per
document), beside the stream's two buffers. The graph's lists must be searched beforehand (`jobs/graph.py`),
where the split's rows fit once (about 16 bytes per non-zero); training does not search them itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from filelock import FileLock

from corrhash.atomic import atomic_dir
from corrhash.data.device_csr import DeviceCSR
from corrhash.data.shards import TfidfShards
from corrhash.data.stream import ShardStream
from corrhash.errors import DataError
from corrhash.log import log
from corrhash.train.neighbours import NeighbourPairs, NeighbourSource, graph_folder

ROWS_FORMAT = 1


def row_store_path(shards: TfidfShards) -> Path:
    return graph_folder(shards) / f"{shards.content_hash[:16]}-train-rows-v{ROWS_FORMAT}"


class RowStore:
    """The train split's rows by id from the memory-mapped CSR folder `path`."""

    def __init__(self, path: Path):
        try:
            meta = json.loads((path / "meta.json").read_text())
            self.indptr = np.load(path / "indptr.npy", allow_pickle=False)
            self.indices = np.memmap(path / "indices.bin", dtype=np.int32, mode="r")
            self.data = np.memmap(path / "data.bin", dtype=np.float32, mode="r")
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: cannot read the row store ({exc}); delete it to write it again") from exc
        self.shape = tuple(meta["shape"])
        if len(self.indptr) != self.shape[0] + 1 or not self.indptr[-1] == len(self.indices) == len(self.data):
            raise DataError(f"{path}: the row store's arrays disagree with its shape {self.shape}; delete it")
        self.path = path

    def rows(self, ids: np.ndarray, keep: np.ndarray | None = None) -> sp.csr_matrix:
        """The rows `ids` as a CSR matrix, a row empty where `keep` is False."""
        starts, lengths = self.indptr[ids], np.diff(self.indptr)[ids]
        if keep is not None:
            lengths = np.where(keep, lengths, 0)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        positions = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return sp.csr_matrix((self.data[positions], self.indices[positions], indptr), shape=(len(ids), self.shape[1]))


def row_store(shards: TfidfShards) -> RowStore:
    """The train split's row store, written first if missing (one shard file at a time)."""
    path = row_store_path(shards)
    with FileLock(str(path) + ".lock"):
        if not path.is_dir():
            files = shards.files("train")
            log(f"row store: writing the {len(files)} train shard files' rows to {path} (memory-mapped for -nbr "
                "training on a stream)")
            with atomic_dir(path) as tmp:
                pointers, total = [np.zeros(1, dtype=np.int64)], 0
                with open(tmp / "indices.bin", "wb") as indices, open(tmp / "data.bin", "wb") as data:
                    for file in files:
                        features = sp.csr_matrix(shards.shard_rows(file)[1], dtype=np.float32)
                        features.sort_indices()
                        indices.write(features.indices.astype(np.int32).tobytes())
                        data.write(features.data.tobytes())
                        pointers.append(features.indptr[1:].astype(np.int64) + total)
                        total += features.nnz
                np.save(tmp / "indptr.npy", np.concatenate(pointers))
                (tmp / "meta.json").write_text(json.dumps({"shape": [int(sum(len(p) for p in pointers[1:])),
                                                                      shards.n_features],
                                                           "content_hash": shards.content_hash}))
    return RowStore(path)


class StreamedNeighbourPairs(NeighbourPairs):
    """`NeighbourPairs` for a streamed split: the stream's batches, each with one sampled graph neighbour per
    document read from the row store."""

    def __init__(self, stream: ShardStream, source: NeighbourSource, device: torch.device, weighted: bool = False):
        graph = sp.csr_matrix(source.graph)
        if graph.shape[0] != source.store.shape[0]:
            raise DataError(f"the document graph has {graph.shape[0]} nodes but the train split "
                            f"{source.store.shape[0]} documents")
        self.stream, self.store, self.device = stream, source.store, device
        self.share_rows = None  # the stream's ids are positions in the whole split already
        self._hold_graph(graph, weighted, "cpu")
        self.shape = (len(stream), stream.n_features)
        log(f"neighbour pairs: streamed rows, neighbours read from {self.store.path}; the graph's structure holds "
            f"{(self.crow.numel() + self.col.numel()) * 8 / 2**20:.0f} MiB")

    def __len__(self) -> int:
        return len(self.stream)

    def batches(self, generator: torch.Generator, batch_size: int, steps: int | None = None):
        for batch, ids in self.stream.id_batches(generator, batch_size, steps):
            neighbour, has, scale = self.sample(torch.from_numpy(ids), generator)
            rows = self.store.rows(neighbour.numpy(), has.numpy())
            pair = (batch, DeviceCSR(rows, self.device).range(0, rows.shape[0]))
            yield pair if scale is None else (*pair, scale.to(self.device))
