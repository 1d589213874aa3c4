"""`prepare_data.py text --ray`: the preparation of a table corpus (many files) spread over a Ray cluster with
Ray Data, giving exactly what `corrhash.data.prepare` gives in one process: the same vocab.json, the same shard
files (same rows, order and boundaries), the same manifest and content hash.

Four parallel passes, each a Ray Data `map` over one job per input file (the last, one job per output shard):

1. scan: parse every row (the same reader, `corpora.table_documents`, so the same checks and messages), count
   rows, collect label names, checksum the file;
2. count: document and term frequencies (`featurize.TermCounts`) of the labelled train documents; the driver
   merges them and fits the vocabulary (`TfidfFeaturizer.from_counts`, the single-process code);
3. featurize: count rows with that vocabulary, drop too short and too long documents, keep the kept rows'
   counts in Arrow files beside the output, and their document frequencies; the driver sums those into the idf;
4. write: each shard job reads its rows (memory-mapped) from those files, turns them into TF-IDF and writes its
   Parquet file.

The driver then hashes the shards' contents (one column of one shard at a time) and writes vocab.json and the
manifest with the single-process code, and `run_prepare` swaps the folder into place.

Memory. A task holds one batch of `BATCH_ROWS` documents (passes 1-3) or one shard (pass 4), never a file or the
corpus. The driver holds vocabulary-sized counts, the document ids for the duplicate check (8 bytes a document),
and, only when the table has no split column, the held-out mask (1 byte a document) or, without a val split, the
val/test halving of the test rows (8 bytes a test document).

Disk. Pass 3 keeps the kept rows' term counts (int32 indices and counts) in Arrow files inside the temporary
output folder until the shards are written: about the size of the shards before compression.

On a cluster of several nodes, the output's parent folder, and input files given as local paths, must be on a
file system that every node sees at the same path (the tasks write into the one and read the other); inputs
given as URIs (s3://, gs://) are read from wherever a task runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from corrhash.data import corpora
from corrhash.data.featurize import TermCounts, TfidfFeaturizer, analyzer
from corrhash.data.prepare import (PrepareConfig, halve_test, label_matrix, run_prepare,
                                   source_checksums, write_shard, write_vocab_and_manifest)
from corrhash.data.shards import SPLITS, digest_split_files, split_table
from corrhash.errors import ConfigError, CorrhashError, DataError
from corrhash.log import log

BATCH_ROWS = 4096
"""Documents a task holds at once."""
WORK = ".work"
"""Folder inside the temporary output for what passes hand on (removed before the swap)."""
COUNTS_SCHEMA = pa.schema([("doc_id", pa.int64()), ("labels", pa.list_(pa.int32())),
                           ("indices", pa.list_(pa.int32())), ("counts", pa.list_(pa.int32()))])


def prepare_on_ray(config: PrepareConfig, address: str | None = None) -> dict:
    """Prepare `config` (dataset `text`) on the Ray cluster at `address` (None: $RAY_ADDRESS or a local Ray)."""
    if config.dataset != "text":
        raise ConfigError(f"--ray prepares text tables; {config.dataset} is prepared in one process (drop --ray)")
    import ray.data

    from corrhash.launch.connect import init_ray

    init_ray(address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # each pass logs one line of its own instead
    return run_prepare(config, build_on_ray)


# ---------------------------------------------------------------- tasks (run on the cluster)

def _documents(job: dict, first_index: int = 0):
    return corpora.table_documents(corpora.as_location(job["path"]), job["label_delimiter"], job["encoding"],
                                   first_index)


def _batches(iterable, size: int = BATCH_ROWS):
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def scan_file(job: dict) -> dict:
    """Pass 1: rows, split column, label names and sha256 of one file."""
    has_split, documents = _documents(job)
    rows, labels = 0, set()
    for document in documents:
        rows += 1
        labels.update(document.labels)
    if rows == 0:
        raise DataError(f"{corpora.location_name(job['path'])}: no rows")
    return {"rows": rows, "has_split": has_split, "labels": sorted(labels),
            "sources": source_checksums([corpora.as_location(job["path"])])}


def _splits(job: dict, documents: list[corpora.Document], first_row: int) -> list[corpora.Document]:
    """The documents with their split, the held-out rows of a table without split column made test rows."""
    if job["holdout"]:
        held = np.load(job["holdout"], mmap_mode="r")
        for i, document in enumerate(documents):
            if held[job["first_index"] + first_row + i]:
                document.split = "test"
    return documents


def count_file(job: dict) -> dict:
    """Pass 2: term counts of the labelled train documents (to a file), documents without labels by split, ids."""
    _, documents = _documents(job, job["first_index"])
    analyze = analyzer(job["recipe"])
    counts, no_labels, labelled, ids = TermCounts(), Counter(), Counter(), []
    row = 0
    for batch in _batches(documents):
        for document in _splits(job, batch, row):
            ids.append(document.doc_id)
            if not document.labels:
                no_labels[document.split] += 1
            else:
                labelled[document.split] += 1
                if document.split == "train":
                    counts.add([document.text], analyze)
        row += len(batch)
    columns = counts.to_columns()
    table = pa.table({"terms": pa.array(columns["terms"], pa.string()), "df": pa.array(columns["df"], pa.int64()),
                      "tf": pa.array(columns["tf"], pa.int64())})
    _write_arrow(Path(job["work"]) / f"terms-{job['file']:05d}.arrow", table)
    np.save(Path(job["work"]) / f"ids-{job['file']:05d}.npy", np.array(ids, dtype=np.int64))
    # no_labels keeps the order in which splits first appear, as the single-process count does.
    return {"n_docs": columns["n_docs"], "no_labels": list(no_labels.items()), "labelled": dict(labelled)}


def featurize_file(job: dict) -> dict:
    """Pass 3: counts of the kept documents (by split, to files) and the document frequencies of the kept train
    documents (to a file); too short and too long documents by split."""
    featurizer = TfidfFeaturizer.from_json(json.loads(Path(job["vocab"]).read_text()))
    recipe = job["recipe"]
    _, documents = _documents(job, job["first_index"])
    writers, kept, too_short, too_long = {}, Counter(), Counter(), Counter()
    df = np.zeros(featurizer.n_features, dtype=np.int64)
    row = 0
    try:
        for batch in _batches(documents):
            by_split: dict[str, list[corpora.Document]] = {}
            for document in _splits(job, batch, row):
                if document.labels:
                    by_split.setdefault(document.split, []).append(document)
            row += len(batch)
            for split, docs in by_split.items():
                counts = featurizer.counts([d.text for d in docs])
                n_tokens = np.asarray(counts.sum(axis=1)).ravel()
                keep = (n_tokens >= recipe.min_tokens) & (n_tokens <= recipe.max_tokens)
                too_short[split] += int((n_tokens < recipe.min_tokens).sum())
                too_long[split] += int((n_tokens > recipe.max_tokens).sum())
                counts = counts[keep]
                docs = [d for d, k in zip(docs, keep) if k]
                kept[split] += len(docs)
                if split == "train":
                    df += featurizer.document_frequencies(counts)
                if split not in writers:
                    path = Path(job["work"]) / f"counts-{job['file']:05d}-{split}.arrow"
                    writers[split] = pa.ipc.new_file(str(path), COUNTS_SCHEMA)
                labels = label_matrix([d.labels for d in docs], job["label_names"])
                writers[split].write_table(pa.Table.from_arrays([
                    pa.array(np.array([d.doc_id for d in docs], dtype=np.int64)),
                    _list(labels.indptr, labels.indices), _list(counts.indptr, counts.indices),
                    _list(counts.indptr, counts.data)], schema=COUNTS_SCHEMA))
    finally:
        for writer in writers.values():
            writer.close()
    np.save(Path(job["work"]) / f"df-{job['file']:05d}.npy", df)
    return {"kept": dict(kept), "too_short": dict(too_short), "too_long": dict(too_long)}


def write_shard_job(job: dict) -> dict:
    """Pass 4: one shard: its rows from the counts files (memory-mapped, only those rows copied), as TF-IDF."""
    payload = json.loads(Path(job["vocab"]).read_text())
    featurizer = TfidfFeaturizer.from_json(payload)
    pieces, maps = [], []
    try:
        for piece in job["pieces"]:
            maps.append(pa.memory_map(str(Path(job["work"]) / f"counts-{piece['file']:05d}-{piece['split']}.arrow")))
            table = pa.ipc.open_file(maps[-1]).read_all()
            rows = piece.get("rows")
            pieces.append(table.slice(piece["start"], piece["stop"] - piece["start"]) if rows is None
                          else table.take(pa.array(rows, pa.int64())))
        table = pa.concat_tables(pieces).combine_chunks()
        counts = _csr(table.column("indices"), table.column("counts"), featurizer.n_features, np.int32)
        labels = _csr(table.column("labels"), None, job["n_labels"], bool)
        doc_ids = table.column("doc_id").to_numpy().copy()
    finally:  # the slices above point into the maps until copied out
        for source in maps:
            source.close()
    shard = split_table(featurizer.tfidf(counts), labels, doc_ids)
    return write_shard(Path(job["out"]), job["split"], job["part"], shard)


def _list(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32)))


def _csr(column: pa.ChunkedArray, data: pa.ChunkedArray | None, n_cols: int, dtype) -> sp.csr_matrix:
    array = column.combine_chunks()
    offsets = np.asarray(array.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    cols = np.array(array.flatten(), dtype=np.int32)  # a copy: the array may point into a memory map
    values = (np.ones(len(cols), dtype=dtype) if data is None
              else np.asarray(data.combine_chunks().flatten()).astype(dtype))
    return sp.csr_matrix((values, cols, offsets), shape=(len(offsets) - 1, n_cols))


def _write_arrow(path: Path, table: pa.Table) -> None:
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)


# ---------------------------------------------------------------- the driver

def _run(function: Callable[[dict], dict], jobs: list[dict], what: str) -> list[dict]:
    """`function` over `jobs` with Ray Data, one job a block; results in job order. A job's DataError (a bad row,
    an unreadable file) or OSError (a full disk) is raised here as a DataError, the first in job order: the one
    a single process would meet first."""
    import ray.data

    started = time.monotonic()
    items = [{"index": i, "job": json.dumps(job, default=_encode)} for i, job in enumerate(jobs)]

    def task(item: dict) -> dict:
        try:
            result = {"ok": function(json.loads(item["job"], object_hook=_decode))}
        except CorrhashError as exc:
            result = {"error": str(exc)}
        except OSError as exc:
            result = {"error": f"{what}: {exc.strerror or exc}"}
        return {"index": item["index"], "result": json.dumps(result)}

    rows = ray.data.from_items(items, override_num_blocks=len(items)).map(task).take_all()
    results = [json.loads(row["result"]) for row in sorted(rows, key=lambda row: row["index"])]
    for result in results:
        if "error" in result:
            raise DataError(result["error"])
    log(f"ray: {what}: {len(jobs)} job(s) in {time.monotonic() - started:.1f}s")
    return [result["ok"] for result in results]


def _encode(value):
    from dataclasses import asdict

    if isinstance(value, Path):
        return str(value)
    return {"__recipe__": asdict(value)}


def _decode(value: dict):
    if "__recipe__" in value:
        from corrhash.data.featurize import TfidfRecipe

        return TfidfRecipe(**value["__recipe__"])
    return value


@dataclass
class _Files:
    """What pass 1 found, over all files in order."""

    paths: list[corpora.Location]
    rows: list[int]
    has_split: bool
    label_names: list[str]
    sources: dict[str, str]

    @property
    def first_index(self) -> list[int]:
        return np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(int).tolist()


def _scan(config: PrepareConfig, inputs: list[corpora.Location]) -> _Files:
    jobs = [{"path": path, "label_delimiter": config.label_delimiter, "encoding": config.text_encoding}
            for path in inputs]
    results = _run(scan_file, jobs, "scan")
    has_split = []
    for result in results:
        has_split.append(result["has_split"])
        corpora.check_same_split_column(inputs, has_split)
    labels = sorted(set().union(*(result["labels"] for result in results)))
    sources = {k: v for result in results for k, v in result["sources"].items()}
    files = _Files(inputs, [r["rows"] for r in results], has_split[0], labels, sources)
    log(f"text: {sum(files.rows)} rows, {len(labels)} labels from {len(inputs)} file(s)")
    return files


def build_on_ray(config: PrepareConfig, inputs: list[corpora.Location], tmp: Path) -> dict:
    """Fill `tmp` as `build_in_process` would, with the work spread over the cluster; returns the manifest."""
    work = tmp / WORK
    work.mkdir()
    files = _scan(config, inputs)
    holdout = None
    if not files.has_split:
        holdout = work / "holdout.npy"
        np.save(holdout, corpora.hold_out_test(sum(files.rows), config.test_fraction, config.seed))
    jobs = [{"path": path, "file": i, "first_index": first, "work": work, "holdout": holdout,
             "label_delimiter": config.label_delimiter, "encoding": config.text_encoding, "recipe": config.recipe,
             "label_names": files.label_names}
            for i, (path, first) in enumerate(zip(files.paths, files.first_index))]

    counted = _run(count_file, jobs, "count terms")
    ids = np.concatenate([np.load(work / f"ids-{i:05d}.npy") for i in range(len(jobs))])
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{', '.join(map(corpora.location_name, inputs))}: 'id' values repeat; each row needs a "
                        "unique id")
    del ids
    no_labels: dict[str, int] = {}
    labelled: Counter = Counter()
    for result in counted:
        for split, n in result["no_labels"]:
            no_labels[split] = no_labels.get(split, 0) + n
        labelled.update(result["labelled"])
    if not labelled["train"]:
        raise DataError(f"{corpora.location_name(inputs[0])}: no labelled training documents")
    train_counts = TermCounts()
    for i in range(len(jobs)):
        with pa.memory_map(str(work / f"terms-{i:05d}.arrow")) as source:
            train_counts += TermCounts.from_columns({**pa.ipc.open_file(source).read_all().to_pydict(),
                                                     "n_docs": counted[i]["n_docs"]})
    log(f"fitting vocabulary on {train_counts.n_docs} train documents")
    featurizer = TfidfFeaturizer.from_counts(train_counts, config.recipe)
    del train_counts
    vocab_path = work / "vocab.json"
    vocab_path.write_text(json.dumps(featurizer.to_json()))

    featurized = _run(featurize_file, [dict(job, vocab=vocab_path) for job in jobs], "featurize")
    splits_present = [s for s in SPLITS if labelled[s]]
    dropped = {"no_labels": no_labels, "too_short": {}, "too_long": {}}
    kept = {}
    for split in splits_present:
        per_file = [r["kept"].get(split, 0) for r in featurized]
        kept[split] = per_file
        dropped["too_short"][split] = sum(r["too_short"].get(split, 0) for r in featurized)
        dropped["too_long"][split] = sum(r["too_long"].get(split, 0) for r in featurized)
        log(f"{split}: {sum(per_file)} of {labelled[split]} documents kept ({dropped['too_short'][split]} too short, "
            f"{dropped['too_long'][split]} too long)")
    if not sum(kept.get("train", [])):
        r = config.recipe
        raise DataError(f"{corpora.location_name(inputs[0])}: corpus is empty after filtering (no train document has "
                        f"{r.min_tokens}..{r.max_tokens} in-vocabulary tokens)")
    df = sum(np.load(work / f"df-{i:05d}.npy") for i in range(len(jobs)))
    featurizer.fit_idf_from(df, sum(kept["train"]))
    vocab_path.write_text(json.dumps(featurizer.to_json()))

    selections = _selections(config, kept)
    for split in SPLITS:
        source, rows = selections.get(split, (None, None))
        if source is None or (len(rows) if rows is not None else sum(kept[source])) == 0:
            raise DataError(f"{corpora.location_name(inputs[0])}: split {split!r} has no documents after filtering")

    shard_jobs = []
    for split in SPLITS:
        (tmp / split).mkdir()
        source, rows = selections[split]
        shard_jobs += [{"split": split, "part": part, "pieces": pieces, "work": work, "out": tmp, "vocab": vocab_path,
                        "n_labels": len(files.label_names)}
                       for part, pieces in enumerate(_shard_pieces(kept[source], source, rows, config.rows_per_shard))]
    entries = _run(write_shard_job, shard_jobs, "transform and write shards")
    shutil.rmtree(work)

    digest = hashlib.sha256()
    splits = {}
    for split in SPLITS:
        shards = [entry for job, entry in zip(shard_jobs, entries) if job["split"] == split]
        digest_split_files([tmp / entry["path"] for entry in shards], digest)
        splits[split] = {"documents": sum(entry["rows"] for entry in shards), "shards": shards}
        log(f"wrote {split}: {splits[split]['documents']} documents in {len(shards)} shard(s)")
    notes = {"split_column": files.has_split, "test_fraction": None if files.has_split else config.test_fraction}
    return write_vocab_and_manifest(tmp, config, digest, splits, featurizer.to_json(), files.sources,
                                    featurizer.n_features, files.label_names, dropped, notes)


def _selections(config: PrepareConfig, kept: dict[str, list[int]]) -> dict[str, tuple[str, np.ndarray | None]]:
    """{output split: (split of the counts files it comes from, positions among their kept rows or None for all)}:
    the val/test halving and the --limit sample drawn as one process draws them (same seeds, same split order)."""
    selections: dict[str, tuple[str, np.ndarray | None]] = {s: (s, None) for s in kept}
    if "val" not in kept and "test" in kept:
        val_rows, test_rows = halve_test(np.zeros(sum(kept["test"])), config.seed)
        selections["test"] = ("test", test_rows)
        selections["val"] = ("test", val_rows)  # after test, as featurize_corpus adds it
    if config.limit is not None:
        rng = np.random.default_rng(config.seed)
        for split, (source, rows) in selections.items():
            n = sum(kept[source]) if rows is None else len(rows)
            if n > config.limit:
                chosen = np.sort(rng.choice(n, config.limit, replace=False))
                selections[split] = (source, chosen if rows is None else rows[chosen])
    return selections


def _shard_pieces(per_file: list[int], source: str, rows: np.ndarray | None, rows_per_shard: int) -> list[list[dict]]:
    """For each shard of a split, the (counts file, rows) pieces it is made of. `per_file`: kept rows of the
    source split in each input file; `rows`: positions among those (sorted), or None for all of them."""
    starts = np.concatenate([[0], np.cumsum(per_file)]).astype(np.int64)
    total = int(starts[-1]) if rows is None else len(rows)
    shards = []
    for begin in range(0, total, rows_per_shard):
        end = min(begin + rows_per_shard, total)
        pieces = []
        if rows is None:
            for file in range(len(per_file)):
                lo, hi = max(begin, starts[file]), min(end, starts[file + 1])
                if lo < hi:
                    pieces.append({"file": file, "split": source, "start": int(lo - starts[file]),
                                   "stop": int(hi - starts[file])})
        else:
            chosen = rows[begin:end]
            owner = np.searchsorted(starts, chosen, side="right") - 1
            for file in np.unique(owner):
                pieces.append({"file": int(file), "split": source,
                               "rows": (chosen[owner == file] - starts[file]).tolist()})
        shards.append(pieces)
    return shards

