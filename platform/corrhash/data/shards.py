"""The shard format every later stage reads: `DIR/{train,val,test}/part-NNNNN.parquet`.

Schema (one row per document): doc_id int64, indices list<int32> (sorted), values list<float32>
(L2-normalized sublinear TF-IDF), labels list<int32>. `DIR/manifest.json` describes the set and
`DIR/vocab.json` holds the featurizer. `TfidfShards` loads a split as CSR without densifying.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from corrhash.errors import DataError

SCHEMA = pa.schema([
    ("doc_id", pa.int64()),
    ("indices", pa.list_(pa.int32())),
    ("values", pa.list_(pa.float32())),
    ("labels", pa.list_(pa.int32())),
])


@dataclass
class Split:
    """One split in memory: features as CSR (float32), labels as a bool matrix."""

    name: str
    features: sp.csr_matrix
    labels: np.ndarray
    doc_ids: np.ndarray

    def __len__(self) -> int:
        return self.features.shape[0]

    def torch_features(self, device=None):
        """The features as a torch sparse CSR tensor (no densification)."""
        import torch

        x = self.features
        with warnings.catch_warnings():  # torch flags sparse CSR as "beta" on every construction
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(torch.from_numpy(x.indptr.astype(np.int64)),
                                           torch.from_numpy(x.indices.astype(np.int64)),
                                           torch.from_numpy(np.array(x.data, dtype=np.float32)),
                                           size=x.shape, device=device, check_invariants=False)


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type))


def split_table(features: sp.csr_matrix, labels: sp.csr_matrix, doc_ids: np.ndarray) -> pa.Table:
    return pa.Table.from_arrays([
        pa.array(doc_ids.astype(np.int64)),
        _list_array(features.indptr, features.indices.astype(np.int32), pa.int32()),
        _list_array(features.indptr, features.data.astype(np.float32), pa.float32()),
        _list_array(labels.indptr, labels.indices.astype(np.int32), pa.int32()),
    ], schema=SCHEMA)


def write_split(out_dir: Path, name: str, table: pa.Table, rows_per_shard: int) -> list[dict]:
    """Write `table` as numbered Parquet shards; return their manifest entries."""
    split_dir = out_dir / name
    split_dir.mkdir(parents=True)
    entries = []
    for part, start in enumerate(range(0, table.num_rows, rows_per_shard)):
        chunk = table.slice(start, rows_per_shard)
        rel = f"{name}/part-{part:05d}.parquet"
        pq.write_table(chunk, out_dir / rel, compression="zstd")
        entries.append({"path": rel, "rows": chunk.num_rows})
    return entries


def table_digest(table: pa.Table, digest: "hashlib._Hash") -> None:
    """Feed a split's contents (not its Parquet bytes, which carry writer metadata) to a hash."""
    table = table.combine_chunks()
    for column in table.columns:
        array = column.chunk(0) if column.num_chunks else pa.array([], type=column.type)
        if isinstance(array, pa.ListArray):
            digest.update(np.asarray(array.offsets).astype(np.int64).tobytes())
            digest.update(np.asarray(array.flatten()).tobytes())
        else:
            digest.update(np.asarray(array).tobytes())


def _csr_from_lists(indices: pa.ChunkedArray, values: np.ndarray | None, n_cols: int, path: Path,
                    what: str) -> sp.csr_matrix:
    """CSR from a list<int32> column of column ids (and flat values; None for a 0/1 pattern)."""
    array = indices.combine_chunks()
    indptr = np.asarray(array.offsets, dtype=np.int64)
    indptr = indptr - indptr[0]
    cols = np.asarray(array.flatten(), dtype=np.int32)
    if len(cols) and (cols.min() < 0 or cols.max() >= n_cols):
        raise DataError(f"{path}: {what} index out of range [0, {n_cols})")
    data = np.ones(len(cols), dtype=bool) if values is None else values
    return sp.csr_matrix((data, cols, indptr), shape=(len(array), n_cols))


class TfidfShards:
    """A prepared shard set: `TfidfShards(dir).split("train")` → `Split`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"{manifest_path}: not found; is {self.root} the output of jobs/prepare_data.py?")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest_path}: invalid JSON ({exc})") from exc

    @property
    def n_features(self) -> int:
        return int(self.manifest["n_features"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def shard_paths(self, name: str) -> list[Path]:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.root}: no split {name!r}; has {sorted(self.manifest['splits'])}")
        return [self.root / entry["path"] for entry in self.manifest["splits"][name]["shards"]]

    def labels(self, name: str, shards: list[Path] | None = None) -> np.ndarray:
        """Only the label matrix of a split (or of the given shard files, in that order)."""
        paths = self.shard_paths(name) if shards is None else [Path(p) for p in shards]
        tables = [pq.read_table(path, columns=["labels"]) for path in paths]
        column = pa.concat_tables(tables).column("labels") if tables else pa.chunked_array([], pa.list_(pa.int32()))
        return _csr_from_lists(column, None, len(self.label_names), self.root, "label").toarray()

    def split(self, name: str, shards: list[Path] | None = None) -> Split:
        """Load a split (or only the given shard files of it, e.g. a worker's share)."""
        paths = self.shard_paths(name) if shards is None else [Path(p) for p in shards]
        tables = []
        for path in paths:
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowInvalid) as exc:
                raise DataError(f"{path}: cannot read shard ({exc})") from exc
            if not table.schema.equals(SCHEMA):
                raise DataError(f"{path}: schema {table.schema} is not the shard schema {SCHEMA}")
            tables.append(table)
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        where = paths[0] if paths else self.root
        values = np.asarray(table.column("values").combine_chunks().flatten(), dtype=np.float32)
        features = _csr_from_lists(table.column("indices"), values, self.n_features, where, "feature")
        labels = _csr_from_lists(table.column("labels"), None, len(self.label_names), where, "label")
        return Split(name, features, labels.toarray(), table.column("doc_id").to_numpy())
