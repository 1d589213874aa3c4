"""The shard format every later stage reads: `DIR/{train,val,test}/part-NNNNN.parquet`.

Schema (one row per document): doc_id int64, indices list<int32> (sorted), values list<float32>
(L2-normalized sublinear TF-IDF), labels list<int32>. `DIR/manifest.json` describes the set (with the
sha256 of every shard file and of vocab.json, and a checksum of itself) and `DIR/vocab.json` holds the
featurizer. `TfidfShards` checks all of that when it opens the files, and loads a split as CSR without
densifying.

DIR may be a URI (`s3://bucket/prefix`, `gs://...`, `hdfs://...`, `file:///...`; see data/files.py): the
files are then read through pyarrow.fs, one shard at a time into memory (nothing is copied to disk). A
verified shard is fetched whole (its sha256 needs every byte); unverified, only the row groups and
columns asked for are read from the remote file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from corrhash.data import files
from corrhash.data.files import Location, sha256_file
from corrhash.errors import DataError
from corrhash.log import log

FORMAT = "corrhash-shards-v1"
SPLITS = ("train", "val", "test")
"""The splits every shard set holds, in the order they are written and hashed."""
VERIFY_ENV = "CORRHASH_VERIFY_SHARDS"
"""Set to 0 to skip the sha256 checks on open (huge corpora on trusted storage); value checks still run."""

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

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def sample(self, count: int, seed: int) -> "Split":
        """A seeded sample of `count` documents in their split order (the whole split when it has no more)."""
        if count >= len(self):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))
        return Split(self.name, self.features[rows], self.labels[rows], self.doc_ids[rows])


def manifest_checksum(manifest: dict) -> str:
    """sha256 of every other field of the manifest: an edited `content_hash` (or any damage) is noticed."""
    fields = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


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
        entries.append({"path": rel, "rows": chunk.num_rows, "sha256": sha256_file(out_dir / rel)})
    return entries


def digest_split(tables: Sequence[pa.Table] | Callable[[str], Iterable[pa.Table]], digest: "hashlib._Hash") -> None:
    """Feed one split's contents to the content hash (its arrays, not its Parquet bytes, which carry writer
    metadata): column by column in SCHEMA order, each over the split's parts in order, as if the parts were one
    table; a list column as its offsets (int64, from 0) then its values.

    `tables`: the parts (one table in memory, the shard tables read), or a function giving the parts holding one
    column (called twice for a list column), to read one column of one shard file at a time."""
    parts = (lambda _: tables) if not callable(tables) else tables
    for name in SCHEMA.names:
        arrays = (table.column(name).combine_chunks() for table in parts(name))
        if not pa.types.is_list(SCHEMA.field(name).type):
            for array in arrays:
                digest.update(np.asarray(array).tobytes())
            continue
        base, count = 0, 0
        for array in arrays:
            offsets = np.asarray(array.offsets).astype(np.int64)
            offsets += base - offsets[0]
            digest.update((offsets if count == 0 else offsets[1:]).tobytes())
            base, count = int(offsets[-1]), count + 1
        if count == 0:  # no parts: the offsets of an empty column
            digest.update(np.zeros(1, dtype=np.int64).tobytes())
        for array in (table.column(name).combine_chunks() for table in parts(name)):
            digest.update(np.asarray(array.flatten()).tobytes())


def digest_split_files(paths: list[Path], digest: "hashlib._Hash") -> None:
    """`digest_split` of a split's shard files, reading one column of one file at a time."""
    digest_split(lambda name: (pq.read_table(path, columns=[name]) for path in paths), digest)


def _row_of(position: int, offsets: np.ndarray) -> int:
    """1-based row holding flat list element `position`, given the list offsets (starting at 0)."""
    return int(np.searchsorted(offsets, position, side="right"))


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of a list column."""
    array = column.combine_chunks()
    offsets = np.asarray(array.offsets, dtype=np.int64)
    return offsets - offsets[0], np.asarray(array.flatten())


def _check_ids(flat: np.ndarray, offsets: np.ndarray, bound: int, path: Location, what: str) -> None:
    bad = (flat < 0) | (flat >= bound)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{path}, row {_row_of(first, offsets)}: {what} index {flat[first]} out of range [0, {bound})")


def _csr(offsets: np.ndarray, cols: np.ndarray, data: np.ndarray, n_cols: int) -> sp.csr_matrix:
    return sp.csr_matrix((data, cols.astype(np.int32), offsets), shape=(len(offsets) - 1, n_cols))


class TfidfShards:
    """A prepared shard set: `TfidfShards(dir).split("train")` → `Split`.

    Opening checks the manifest (its own checksum, vocab.json's sha256 and size); reading a shard checks
    its sha256 against the manifest, then its rows: finite, non-negative values, indices in range, as many
    values as indices. `verify=False` (or $CORRHASH_VERIFY_SHARDS=0) skips only the sha256 work. A manifest
    written before shards carried checksums is verified by recomputing its content hash (one full read)."""

    def __init__(self, root: str | Path, verify: bool | None = None):
        self.verify = os.environ.get(VERIFY_ENV, "1") != "0" if verify is None else verify
        try:
            self.folder = files.Folder(root)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(f"{files.display(root).rstrip('/')}: cannot open ({exc})") from exc
        self.root: Location = self.folder.root
        self.manifest_path = self.folder.at("manifest.json")
        if not self.folder.is_file(self.manifest_path):
            raise DataError(f"{self.manifest_path}: not found; is {self.root} the output of jobs/prepare_data.py?")
        try:
            self.manifest = json.loads(self.folder.read_bytes(self.manifest_path).decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.manifest_path}: invalid JSON ({exc})") from exc
        except OSError as exc:  # found a moment ago: a permission, a dropped connection
            raise DataError(f"{self.manifest_path}: cannot read ({exc})") from exc
        self._entries = self._check_manifest()
        self._check_vocab()
        if self.verify and "manifest_sha256" not in self.manifest:
            log(f"{self.manifest_path}: written before shard checksums; verifying its content_hash (one full read)")
            if self.compute_content_hash() != self.content_hash:
                raise DataError(f"{self.manifest_path}: content_hash {self.content_hash[:12]}… does not match the "
                                "shards and vocab.json; the folder was changed or damaged: prepare it again")

    def _check_manifest(self) -> dict[Location, dict]:
        """The manifest's shape and checksum; returns {absolute shard path or URI: its manifest entry}."""
        m, where = self.manifest, self.manifest_path
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            found = m.get("format") if isinstance(m, dict) else type(m).__name__
            raise DataError(f"{where}: not a corrhash shard manifest (format {found!r}, expected {FORMAT!r})")
        if self.verify and "manifest_sha256" in m and manifest_checksum(m) != m["manifest_sha256"]:
            raise DataError(f"{where}: its checksum does not match its contents (content_hash, n_features or "
                            "another field was edited, or the file is damaged); prepare the data again")
        entries = {}
        try:
            if not (isinstance(m["n_features"], int) and m["n_features"] > 0 and isinstance(m["label_names"], list)
                    and isinstance(m["content_hash"], str) and isinstance(m["dataset"], str)):
                raise TypeError("n_features, label_names, content_hash or dataset")
            for name in SPLITS:
                for entry in m["splits"][name]["shards"]:
                    rel = PurePosixPath(entry["path"])
                    if rel.is_absolute() or ".." in rel.parts:
                        raise DataError(f"{where}: shard path {entry['path']!r} is outside {self.root}")
                    if not isinstance(entry["rows"], int):
                        raise TypeError(f"rows of {entry['path']}")
                    entries[self.folder.key(self.folder.at(rel))] = entry
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: malformed manifest ({exc} missing or of the wrong type)") from exc
        return entries

    def _check_vocab(self) -> None:
        """vocab.json's checksum and size; keeps it parsed as `self.vocab` (a model is saved with it)."""
        vocab_path = self.folder.at("vocab.json")
        try:
            data = self.folder.read_bytes(vocab_path)
            vocab = json.loads(data)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{vocab_path}: cannot read the featurizer of {self.root} ({exc})") from exc
        expected = self.manifest.get("vocab_sha256")
        if self.verify and expected and hashlib.sha256(data).hexdigest() != expected:
            raise DataError(f"{vocab_path}: sha256 does not match manifest.json; the file was changed or damaged")
        terms = vocab.get("terms") if isinstance(vocab, dict) else None
        size = len(terms) if isinstance(terms, list) else (vocab.get("n_features") if isinstance(vocab, dict) else None)
        if size != self.n_features:
            raise DataError(f"{self.manifest_path}: n_features {self.n_features} disagrees with {vocab_path} "
                            f"({size} features)")
        self.vocab: dict = vocab

    @property
    def _rows_are_l2_normalized(self) -> bool:
        recipe = self.manifest.get("recipe")
        tfidf = recipe.get("recipe") if isinstance(recipe, dict) else None
        norm = tfidf.get("norm", "l2") if isinstance(tfidf, dict) else "l2"
        kind = self.manifest.get("kind", self.manifest.get("dataset"))  # older manifests: the kind was the name
        return kind == "mat" or norm == "l2"  # .mat rows are always normalized

    @property
    def n_features(self) -> int:
        return int(self.manifest["n_features"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def shard_paths(self, name: str) -> list[Location]:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.root}: no split {name!r}; has {sorted(self.manifest['splits'])}")
        return [self.folder.at(entry["path"]) for entry in self.manifest["splits"][name]["shards"]]

    def _read_shard(self, path: Location, columns: list[str] | None = None) -> pa.Table:
        """One shard file, its sha256 checked first (when verifying), then its schema and rows."""
        entry = self._entries.get(self.folder.key(path))
        if entry is None:
            raise DataError(f"{path}: not a shard listed in {self.manifest_path}")
        expected = entry.get("sha256")
        try:
            if self.verify and expected:
                data = self.folder.read_bytes(path)
                if hashlib.sha256(data).hexdigest() != expected:
                    raise DataError(f"{path}: sha256 does not match {self.manifest_path}; the shard file was changed "
                                    "or damaged after prepare_data wrote it: prepare the data again")
                table = pq.read_table(pa.BufferReader(data), columns=columns)
            else:  # only the column chunks asked for (ranged reads on a remote file)
                with self.folder.open_file(path) as handle:
                    table = pq.ParquetFile(handle).read(columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot read shard ({exc})") from exc
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        if not table.schema.equals(schema):
            raise DataError(f"{path}: schema {table.schema} is not the shard schema {schema}")
        if table.num_rows != entry["rows"]:
            raise DataError(f"{path}: {table.num_rows} rows, but {self.manifest_path} lists {entry['rows']}")
        for column_name, column in zip(table.column_names, table.columns):
            nulls = column.null_count or (column.combine_chunks().flatten().null_count
                                          if pa.types.is_list(column.type) else 0)
            if nulls:
                raise DataError(f"{path}: column {column_name!r} holds {nulls} null value(s)")
        return table

    def shard_rows(self, path: Location) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
        """(doc ids, features, labels) of one shard file, every row checked."""
        table = self._read_shard(path)
        offsets, cols = _flat(table.column("indices"))
        value_offsets, values = _flat(table.column("values"))
        if not np.array_equal(offsets, value_offsets):
            row = int(np.argmax(np.diff(offsets) != np.diff(value_offsets))) + 1
            raise DataError(f"{path}, row {row}: {offsets[row] - offsets[row - 1]} feature indices but "
                            f"{value_offsets[row] - value_offsets[row - 1]} values")
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(f"{path}, row {_row_of(first, offsets)}: value {values[first]} "
                            "(TF-IDF values must be finite and >= 0)")
        if self._rows_are_l2_normalized:
            row_of_value = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
            norms = np.sqrt(np.bincount(row_of_value, weights=values.astype(np.float64) ** 2,
                                        minlength=len(offsets) - 1))
            bad = np.abs(norms - 1.0) > 1e-3
            if bad.any():
                row = int(np.argmax(bad))
                raise DataError(f"{path}, row {row + 1}: L2 norm {norms[row]:.4g}, but the recipe normalizes rows to 1")
        _check_ids(cols, offsets, self.n_features, path, "feature")
        label_offsets, label_ids = _flat(table.column("labels"))
        _check_ids(label_ids, label_offsets, len(self.label_names), path, "label")
        return (table.column("doc_id").to_numpy(), _csr(offsets, cols, values.astype(np.float32), self.n_features),
                _csr(label_offsets, label_ids, np.ones(len(label_ids), dtype=bool), len(self.label_names)))

    def files(self, name: str, shards: list[Location] | None = None) -> list[Location]:
        """The shard files of a split (or the given ones of it, as Locations); an empty whole split is an error."""
        paths = self.shard_paths(name) if shards is None else [self.folder.member(p) for p in shards]
        if shards is None and sum(e["rows"] for e in self.manifest["splits"][name]["shards"]) == 0:
            raise DataError(f"{self.manifest_path}: split {name!r} has no documents")
        return paths

    def rows_in(self, path: Location) -> int:
        """The rows the manifest lists for one shard file."""
        entry = self._entries.get(self.folder.key(path))
        if entry is None:
            raise DataError(f"{path}: not a shard listed in {self.manifest_path}")
        return int(entry["rows"])

    def nonzeros_in(self, path: Location) -> int:
        """The feature values one shard file holds, from its Parquet footer alone (a ranged read on a URI)."""
        try:
            with self.folder.open_file(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot read shard ({exc})") from exc
        column = next(i for i in range(metadata.num_columns) if metadata.schema.column(i).path.startswith("values."))
        return sum(metadata.row_group(g).column(column).num_values for g in range(metadata.num_row_groups))

    def labels(self, name: str, shards: list[Location] | None = None) -> np.ndarray:
        """Only the label matrix of a split (or of the given shard files, in that order)."""
        blocks = []
        for path in self.files(name, shards):
            offsets, label_ids = _flat(self._read_shard(path, columns=["labels"]).column("labels"))
            _check_ids(label_ids, offsets, len(self.label_names), path, "label")
            blocks.append(_csr(offsets, label_ids, np.ones(len(label_ids), dtype=bool), len(self.label_names)))
        if not blocks:
            return np.zeros((0, len(self.label_names)), dtype=bool)
        return sp.vstack(blocks, format="csr").toarray()

    def doc_ids(self, name: str) -> np.ndarray:
        """Only the doc_ids of a split, in its order."""
        return np.concatenate([self._read_shard(path, columns=["doc_id"]).column("doc_id").to_numpy()
                               for path in self.files(name)])

    def split(self, name: str, shards: list[Location] | None = None) -> Split:
        """Load a split (or only the given shard files of it, e.g. a worker's share)."""
        return self.stack(name, [self.shard_rows(path) for path in self.files(name, shards)])

    def stack(self, name: str, parts: list[tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]]) -> Split:
        """A Split of `shard_rows` results (or row subsets of them), in order; empty when there are none."""
        if not parts:
            return Split(name, sp.csr_matrix((0, self.n_features), dtype=np.float32),
                         np.zeros((0, len(self.label_names)), dtype=bool), np.zeros(0, dtype=np.int64))
        features = sp.vstack([f for _, f, _ in parts], format="csr")
        labels = sp.vstack([y for _, _, y in parts], format="csr")
        return Split(name, features, labels.toarray(), np.concatenate([ids for ids, _, _ in parts]))

    def compute_content_hash(self) -> str:
        """The content hash prepare_data computed: every split's arrays, then vocab.json (reads everything)."""
        digest = hashlib.sha256()
        for name in SPLITS:
            digest_split([self._read_shard(path) for path in self.shard_paths(name)], digest)
        digest.update(self.folder.read_bytes(self.folder.at("vocab.json")))
        return digest.hexdigest()


def upload(folder: str | Path, target: str, overwrite: bool = False) -> TfidfShards:
    """Copy a prepared folder to a URI (`s3://bucket/prefix`, ...) so that every node of a cluster reads the same
    data; returns the uploaded set, opened (manifest and vocab verified).

    Object stores have no rename, so the order makes the upload safe to read at any time: manifest.json, the file
    readers look for first, goes last (a reader sees "not found" until the set is complete), and with `overwrite` an
    old set at `target` loses its manifest first, then its files. Only a prepared set is ever overwritten."""
    if files.is_uri(folder):
        raise DataError(f"{files.display(folder)}: upload copies a local folder; this is a URI already")
    local = TfidfShards(folder)  # a damaged folder is not spread further
    where = files.display(target).rstrip("/")
    try:
        remote = files.Folder(target)
        if not remote.is_empty():
            try:
                old_format = json.loads(remote.read_bytes(remote.at("manifest.json"))).get("format")
            except (OSError, ValueError, AttributeError):
                old_format = None
            if old_format != FORMAT:
                raise DataError(f"{where}: holds files that are not a prepared shard set; choose another prefix")
            if not overwrite:
                raise DataError(f"{where}: already holds a prepared shard set; pass overwrite=True to replace it")
            remote.remove("manifest.json")
            remote.remove_all()
        listed = [entry["path"] for name in SPLITS for entry in local.manifest["splits"][name]["shards"]]
        for rel in ["vocab.json", *listed, "manifest.json"]:
            remote.copy_in(local.root / rel, rel)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{where}: cannot upload {local.root} there ({exc})") from exc
    return TfidfShards(target)
