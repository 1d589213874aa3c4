"""Hashing a prepared corpus across a Ray cluster with Ray Data: `read_parquet` over the split's shard files,
`map_batches` with a pool of actors that each hold the model (loaded once per actor, from the model's files
shipped through the object store, so no node needs them on disk), and `write_parquet` of the codes as shards
(doc_id, code: the packed bits). The codes are then read back in the split's order: the same codes, in the same
order, as one process's `HashingModel.encode_features` gives (tests/test_hash_ray.py compares them bit for bit).
What the driver holds is the codes (bits / 8 bytes a document), not the corpus.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from corrhash.atomic import atomic_dir
from corrhash.data import TfidfShards
from corrhash.errors import DataError
from corrhash.log import log
from corrhash.serve.hashing import ENCODE_CHUNK, HashingModel, from_files, model_files


MIN_ACTOR_CPUS = 0.25
TASK_CPUS = 0.25
"""CPUs each of Ray Data's read and write tasks asks for: I/O-bound, and small enough to fit beside the actors."""


class CodeActor:
    """One actor of the pool: the model, loaded once, encoding batches of shard rows."""

    def __init__(self, files: dict[str, bytes], device: str = "cpu"):
        self.model = from_files(files, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        indices, values = batch.column("indices").combine_chunks(), batch.column("values").combine_chunks()
        features = sp.csr_matrix((values.values.to_numpy(zero_copy_only=False),
                                  indices.values.to_numpy(zero_copy_only=False),
                                  indices.offsets.to_numpy()), shape=(batch.num_rows, self.model.n_features))
        codes = self.model.encode_features(features)
        width = codes.shape[1]
        return pa.table({"doc_id": batch.column("doc_id"),
                         "code": pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(codes),
                                                                       [None, pa.py_buffer(codes.tobytes())])})


def hash_on_ray(model: HashingModel, shards_path: str | Path, split: str, out: Path, actors: int = 2) -> np.ndarray:
    """Packed codes of `split`'s documents in the split's order, hashed by `actors` Ray Data actors; the code
    shards (and codes.json: the model's identity, bits, the corpus's content hash) are written to `out`."""
    import ray

    shards = TfidfShards(shards_path)
    files = [str(path) for path in shards.files(split)]
    if not files:
        raise DataError(f"{shards_path}: no {split} shards to hash")
    # The actors leave room on every node for Ray Data's own read and write tasks (TASK_CPUS each): on a cluster
    # whose CPUs the actors would take whole, those tasks never start (seen on 2 CPUs with 2 actors: "3/2 CPU"
    # requested, no progress; and on two nodes of 1 CPU, an actor of 0.5 on each, with tasks asking for 1).
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_actor = max(MIN_ACTOR_CPUS, min(1.0, cpus / actors - TASK_CPUS))
    log(f"hashing {split} of {shards_path} on Ray Data: {len(files)} shard files, {actors} actors holding the model "
        f"({per_actor:g} CPU each of the cluster's {cpus:g})")
    # Ray Data's V2 Parquet read starts with a ListFiles task that always asks for a whole CPU, which no node has
    # once the actors sit on nodes of 1 CPU each (seen: two nodes, "2.5/2 CPU", no progress); the V1 read takes
    # our explicit file list and its read tasks ask for TASK_CPUS. This driver only reads these shards.
    ray.data.DataContext.get_current().use_datasource_v2 = False
    # At least two blocks an actor, so that every actor of the pool gets work even from one shard file.
    dataset = ray.data.read_parquet(files, columns=["doc_id", "indices", "values"],
                                    override_num_blocks=max(len(files), 2 * actors),
                                    ray_remote_args={"num_cpus": TASK_CPUS})
    codes = dataset.map_batches(CodeActor, fn_constructor_kwargs={"files": model_files(model)},
                                compute=ray.data.ActorPoolStrategy(size=actors), batch_size=ENCODE_CHUNK,
                                batch_format="pyarrow", num_cpus=per_actor)
    with atomic_dir(out) as tmp:
        codes.write_parquet(str(tmp / "codes"), ray_remote_args={"num_cpus": TASK_CPUS})
        (tmp / "codes.json").write_text(json.dumps({"model": model.identity, "bits": model.bits, "split": split,
                                                    "data": str(shards_path),
                                                    "content_hash": shards.content_hash}, indent=1))
    return read_codes(out, shards.doc_ids(split))


def read_codes(out: Path, doc_ids: np.ndarray) -> np.ndarray:
    """The packed codes in `out`'s shards, put in the order of `doc_ids`; every doc_id must be there once."""
    table = pq.read_table(out / "codes")
    ids = table.column("doc_id").to_numpy()
    code = table.column("code").combine_chunks()  # fixed-size binary: one buffer of rows x width bytes
    width = code.type.byte_width
    codes = np.frombuffer(code.buffers()[1], dtype=np.uint8)[code.offset * width:(code.offset + len(code)) * width]
    codes = codes.reshape(-1, width)
    order = np.argsort(ids, kind="stable")
    position = np.searchsorted(ids[order], doc_ids)
    if len(ids) != len(doc_ids) or (position >= len(ids)).any() or (ids[order][np.minimum(position, len(ids) - 1)]
                                                                   != doc_ids).any():
        raise DataError(f"{out}: the code shards hold {len(ids)} documents, not the split's {len(doc_ids)}")
    return codes[order][position]


def ray_corpus_encoder(actors: int, out: Path | None) -> Callable:
    """`encode_corpus(model, shards_path, split) -> packed codes` for `index_for`, on Ray Data (Ray must be
    initialised); the code shards go to `out` (default: a temporary folder, removed)."""
    def encode(model: HashingModel, shards_path: Path, split: str) -> np.ndarray:
        if out is not None:
            return hash_on_ray(model, shards_path, split, out, actors)
        with tempfile.TemporaryDirectory(prefix="corrhash-codes-") as tmp:
            return hash_on_ray(model, shards_path, split, Path(tmp) / "codes", actors)
    return encode
