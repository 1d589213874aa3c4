"""Raw corpus → Parquet TF-IDF shards + vocab.json + manifest.json, written atomically.

`run_prepare` is the frame (checks, temporary folder, SIGTERM, the swap into place) of two builds that write the same
files: `build_in_process` (`prepare`: any corpus, held in memory) and `build_in_passes` (a table corpus of many files,
in four passes of jobs run by a `map`: `builtins.map`, or Ray tasks in data/prepare_ray.py). Both drop documents by
length, halve the official test set and draw the --limit sample with the same functions (`length_filter`,
`selections`), fail with the same messages and end with `write_vocab_and_manifest`.

The passes, one job per input file (the last, one job per output shard):

1. scan: parse every row (the same reader, `readers.table.table_documents`, so the same checks and messages), count
   rows, collect label names, checksum the file;
2. count: document and term frequencies (`featurize.TermCounts`) of the labelled train documents; the driver
   merges them and fits the vocabulary (`TfidfFeaturizer.from_counts`, as `fit_vocabulary` does);
3. featurize: count rows with that vocabulary, drop too short and too long documents, keep the kept rows'
   counts in Arrow files beside the output, and their document frequencies; the driver sums those into the idf;
4. write: each shard job reads its rows (memory-mapped) from those files, turns them into TF-IDF and writes its
   Parquet file.

The driver then hashes the shards' contents (one column of one shard at a time) and writes vocab.json and the
manifest. A job holds one batch of `BATCH_ROWS` documents (passes 1-3) or one shard (pass 4), never a file or the
corpus. The driver holds vocabulary-sized counts, the document ids for the duplicate check (8 bytes a document)
and, only when the table has no split column, the held-out mask (1 byte a document) or, without a val split, the
val/test halving of the test rows (8 bytes a test document). Pass 3 keeps the kept rows' term counts (int32 indices
and counts) in Arrow files inside the temporary output folder until the shards are written: about the size of the
shards before compression."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from corrhash.atomic import replace_dir, sibling_temp_dir
from corrhash.data.featurize import TermCounts, TfidfFeaturizer, TfidfRecipe, analyzer
from corrhash.data.files import Location, as_location, display, is_local_dir, is_uri, sha256_file
from corrhash.data.readers import (DEFAULT_ENCODING, Document, PreparedSplits, RawCorpus, check_encoding, mat, ng20,
                                   reuters, tmc)
from corrhash.data.readers.table import (check_same_split_column, hold_out_test, no_rows, read_table, repeated_ids,
                                         table_documents)
from corrhash.data.shards import (FORMAT, SPLITS, digest_split, digest_split_files, manifest_checksum, split_table,
                                  write_split)
from corrhash.data.sources import resolve_raw_inputs
from corrhash.errors import ConfigError, CorrhashError, DataError
from corrhash.log import log

DATASETS = ("20ng", "reuters", "tmc", "text", "mat")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class PrepareConfig:
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    """Corpus kind: 20ng, reuters, tmc, text (JSONL/CSV/Parquet) or mat (VDSH .mat file)."""
    out: Path
    """Output folder (must not exist unless --overwrite); built in a temporary sibling and renamed into place."""
    name: str | None = None
    """The dataset's name in runs, tags and registered models (corrhash-NAME-BITSb): letters, digits, '.', '_',
    '-'; default: the corpus kind (20ng, with its release when not bydate; reuters; tmc; mat), and for text the
    --out folder's name, so that each of a user's corpora gets its own registered models and champion."""
    raw: Path | list[Path | str] | None = None
    """Raw archive, folder or file; text takes several files, folders of them, glob patterns or URIs (s3://,
    gs://, file://: an object or a prefix), read in the order given as one table; default: $CORRHASH_RAW_DIR,
    else (20ng only) download."""
    recipe: TfidfRecipe = TfidfRecipe()
    """TF-IDF recipe (vocabulary fitted on train only)"""
    rows_per_shard: int = 2000
    """Documents per Parquet file."""
    seed: int = 0
    """Seed for halving the official test set into val and test (and for text splits)."""
    keep_boilerplate: bool = False
    """20ng bydate: keep headers, signature footers and quoted replies."""
    release: Literal[ng20.NG20_RELEASES] = "bydate"  # type: ignore[valid-type]
    """20ng: 'bydate' (the archive's 18,846 posts, boilerplate stripped), or '18828': the release the paper used,
    rebuilt from bydate (From: and Subject: lines kept, other headers dropped, duplicate posts removed, text
    otherwise whole; bydate's train/test split); its manifest names the dataset '20ng-18828'."""
    top_labels: int = 20
    """reuters: keep the N most frequent categories (0 keeps all)."""
    label_delimiter: str = ","
    """text: delimiter of a string `labels` column."""
    test_fraction: float = 0.2
    """text without a `split` column: fraction of rows held out (then halved into val/test)."""
    overwrite: bool = False
    """Replace an existing output folder written by prepare_data (never any other folder, a file, or one holding
    the raw input)."""
    limit: int | None = None
    """Keep a seeded random sample of at most this many documents per split (smoke tests, quick runs)."""
    encoding: str | None = None
    """Text encoding of the raw files; default utf-8 for text, latin-1 for 20ng, reuters and tmc."""

    @property
    def dataset_name(self) -> str:
        """The name written into the manifest: --name; else the corpus kind, with the 20ng release when it is not
        bydate, so that shards of the two releases are told apart in runs, tags and registered model names; for
        text, the --out folder's name (every text corpus named `text` shared one registered model)."""
        if self.name is not None:
            return self.name
        if self.dataset == "text":
            return Path(self.out).name
        return f"{self.dataset}-{self.release}" if self.release != "bydate" else self.dataset

    @property
    def text_encoding(self) -> str | None:
        """The encoding the reader uses (None for mat, which holds no text)."""
        return self.encoding or DEFAULT_ENCODING.get(self.dataset)

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if self.release not in ng20.NG20_RELEASES:
            raise ConfigError(f"--release {self.release!r}: choose one of {', '.join(ng20.NG20_RELEASES)}")
        if self.release != "bydate" and self.dataset != "20ng":
            raise ConfigError(f"--release {self.release} applies to 20ng only, not {self.dataset}")
        if not DATASET_NAME.fullmatch(self.dataset_name):
            given = f"--name {self.name!r}" if self.name is not None else \
                f"the --out folder's name {self.dataset_name!r} (the default name of a text corpus)"
            raise ConfigError(f"{given}: a dataset name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                              "letter or digit (it becomes part of registered model names); pass --name")
        if self.rows_per_shard < 1:
            raise ConfigError(f"--rows-per-shard {self.rows_per_shard}: must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be >= 1")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test-fraction {self.test_fraction}: must be between 0 and 1")
        if self.seed < 0:
            raise ConfigError(f"--seed {self.seed}: must be >= 0")
        if not self.label_delimiter:
            raise ConfigError("--label-delimiter must not be empty")
        if self.encoding is not None:
            if self.dataset == "mat":
                raise ConfigError("--encoding does not apply to mat (a .mat file holds no text)")
            check_encoding(self.encoding)
        r = self.recipe
        if r.min_tokens > r.max_tokens:
            raise ConfigError(f"--min-tokens {r.min_tokens} exceeds --max-tokens {r.max_tokens}")
        if not 0 < r.max_df <= 1:
            raise ConfigError(f"--max-df {r.max_df}: must be in (0, 1]")
        if r.min_df < 0:
            raise ConfigError(f"--min-df {r.min_df}: must be >= 0")
        if r.max_features is not None and r.max_features < 1:
            raise ConfigError(f"--max-features {r.max_features}: must be >= 1")


def source_checksums(sources: list[Location]) -> dict[str, str]:
    """{file (a URI without its query): sha256} of the raw inputs, a folder's files one by one."""
    files = []
    for source in sources:
        if is_local_dir(source):
            files.extend(sorted(p for p in source.rglob("*") if p.is_file()))
        else:
            files.append(source)
    return {display(p): sha256_file(p) for p in files}


def label_matrix(label_lists: list[list[str]], names: list[str]) -> sp.csr_matrix:
    index = {name: i for i, name in enumerate(names)}
    rows = [sorted({index[label] for label in labels}) for labels in label_lists]
    indptr = np.cumsum([0] + [len(row) for row in rows])
    cols = np.array([c for row in rows for c in row], dtype=np.int32)
    return sp.csr_matrix((np.ones(len(cols), dtype=bool), cols, indptr), shape=(len(rows), len(names)))


# ---------------------------------------------------------------- what both builds do, written once

def halve_test(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the official test rows with `seed` and halve them: (val rows, test rows), each sorted."""
    order = np.random.default_rng(seed).permutation(n_rows)
    half = len(order) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def length_filter(counts: sp.csr_matrix, recipe: TfidfRecipe) -> tuple[np.ndarray, int, int]:
    """(the rows to keep, how many are too short, how many too long) of term-count rows: a document keeps
    min_tokens..max_tokens in-vocabulary tokens."""
    n_tokens = np.asarray(counts.sum(axis=1)).ravel()
    keep = (n_tokens >= recipe.min_tokens) & (n_tokens <= recipe.max_tokens)
    return keep, int((n_tokens < recipe.min_tokens).sum()), int((n_tokens > recipe.max_tokens).sum())


def selections(config: PrepareConfig, kept: dict[str, int]) -> dict[str, tuple[str, np.ndarray | None]]:
    """{output split: (the split its documents come from, their positions among its `kept` documents, or None for
    all)}: without a val split the official test set halved into val and test (val after test), then the --limit
    sample of each, drawn with one seeded generator in that order."""
    chosen: dict[str, tuple[str, np.ndarray | None]] = {s: (s, None) for s in kept}
    if "val" not in kept and "test" in kept:
        val_rows, test_rows = halve_test(kept["test"], config.seed)
        chosen["test"] = ("test", test_rows)
        chosen["val"] = ("test", val_rows)
    if config.limit is not None:
        rng = np.random.default_rng(config.seed)
        for split, (source, rows) in chosen.items():
            n = kept[source] if rows is None else len(rows)
            if n > config.limit:
                picked = np.sort(rng.choice(n, config.limit, replace=False))
                chosen[split] = (source, picked if rows is None else rows[picked])
    return chosen


def no_labelled_training(source: Location) -> DataError:
    return DataError(f"{display(source)}: no labelled training documents")


def empty_after_filtering(source: Location, recipe: TfidfRecipe) -> DataError:
    return DataError(f"{display(source)}: corpus is empty after filtering (no train document has "
                     f"{recipe.min_tokens}..{recipe.max_tokens} in-vocabulary tokens)")


def check_splits(documents: dict[str, int], source: Location) -> None:
    """Every split has documents once filtered, halved and sampled."""
    for split in SPLITS:
        if not documents.get(split):
            raise DataError(f"{display(source)}: split {split!r} has no documents after filtering")


# ---------------------------------------------------------------- in this process, the corpus in memory

def featurize_corpus(corpus: RawCorpus, config: PrepareConfig) -> PreparedSplits:
    """The kept documents of each split, as TF-IDF (halved and sampled afterwards: `select`)."""
    recipe = config.recipe
    dropped = {"no_labels": {}, "too_short": {}, "too_long": {}}
    by_split: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for doc in corpus.documents:
        if not doc.labels:
            dropped["no_labels"][doc.split] = dropped["no_labels"].get(doc.split, 0) + 1
            continue
        by_split[doc.split].append(doc)
    if not by_split["train"]:
        raise no_labelled_training(corpus.sources[0])
    log(f"fitting vocabulary on {len(by_split['train'])} train documents")
    featurizer = TfidfFeaturizer.fit_vocabulary([d.text for d in by_split["train"]], recipe)
    kept_counts, kept_docs = {}, {}
    for split, docs in by_split.items():
        if not docs:
            continue
        counts = featurizer.counts([d.text for d in docs])
        keep, dropped["too_short"][split], dropped["too_long"][split] = length_filter(counts, recipe)
        kept_counts[split] = counts[keep]
        kept_docs[split] = [d for d, k in zip(docs, keep) if k]
        log(f"{split}: {keep.sum()} of {len(docs)} documents kept "
            f"({dropped['too_short'][split]} too short, {dropped['too_long'][split]} too long)")
    if not kept_docs.get("train"):
        raise empty_after_filtering(corpus.sources[0], recipe)
    featurizer.fit_idf(kept_counts["train"])
    features = {s: featurizer.tfidf(c) for s, c in kept_counts.items()}
    doc_ids = {s: np.array([d.doc_id for d in docs], dtype=np.int64) for s, docs in kept_docs.items()}
    labels = {s: label_matrix([d.labels for d in docs], corpus.label_names) for s, docs in kept_docs.items()}
    return PreparedSplits(features, labels, doc_ids, corpus.label_names, featurizer.to_json(), dropped)


def select(prepared: PreparedSplits, config: PrepareConfig) -> None:
    """The output splits `selections` gives: the test set halved when there is no val split, the --limit sample."""
    chosen = selections(config, {split: x.shape[0] for split, x in prepared.features.items()})
    features, labels, doc_ids = {}, {}, {}
    for split, (source, rows) in chosen.items():
        x, y, ids = prepared.features[source], prepared.labels[source], prepared.doc_ids[source]
        features[split], labels[split], doc_ids[split] = (x, y, ids) if rows is None else (x[rows], y[rows], ids[rows])
    prepared.features, prepared.labels, prepared.doc_ids = features, labels, doc_ids


class _Termination:
    """SIGTERM (`ray job stop`, `kill`) while preparing: raise SystemExit so the cleanup runs (the default
    action kills the process and leaves the temporary folder behind), except during the final swap, which
    finishes first so that `--out` is never left missing."""

    def __init__(self):
        self.holding = False
        self.pending: int | None = None

    def handle(self, signum, frame) -> None:
        if self.holding:
            self.pending = signum
        else:
            raise SystemExit(128 + signum)

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield
            return
        previous = signal.signal(signal.SIGTERM, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    @contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending is not None:
                raise SystemExit(128 + self.pending)


def is_prepared_corpus(folder: Path) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_not_input(out: Path, raw: Path) -> None:
    """Refuse an --out that holds or sits inside a (local) raw input."""
    out_real, raw_real = out.resolve(), raw.resolve()
    if out_real == raw_real or out_real in raw_real.parents:
        raise DataError(f"{out}: holds the raw input {raw}; choose an --out outside it")
    if raw_real in out_real.parents:
        raise DataError(f"{out}: is inside the raw input {raw}; choose an --out outside it")


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse an existing --out without --overwrite, and (with it) anything that is not a prepared corpus:
    --overwrite deletes the old folder."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise DataError(f"{out}: already exists; pass --overwrite to replace it")
        if out.is_symlink() or not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder; --overwrite only replaces a folder written by "
                            "prepare_data")
        if not is_prepared_corpus(out):
            raise DataError(f"{out}: exists and is not a prepared corpus (no manifest.json of format {FORMAT}); "
                            "--overwrite only replaces those: choose another --out or remove it yourself")


def make_temp_dir(out: Path) -> tuple[Path, list[Path]]:
    """The temporary sibling of `out` and the parent folders created for it, made before any work so that
    a read-only or missing location fails at once."""
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()][::-1]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return sibling_temp_dir(out), created  # which first removes what a killed run left beside `out`
    except OSError as exc:
        _remove_empty(created)
        raise DataError(f"{out}: cannot write the output there (--out): {exc.strerror or exc}") from exc


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def read_and_featurize(config: PrepareConfig, inputs: list[Location]) -> tuple[PreparedSplits, list, dict]:
    """(prepared splits, source files, reader notes)."""
    raw = inputs[0]
    log(f"reading {config.dataset} from {', '.join(map(display, inputs))}")
    if config.dataset == "mat":
        return mat.read_mat(raw), [raw], {}
    encoding = config.text_encoding
    corpus = {
        "20ng": lambda: ng20.read_20ng(raw, config.keep_boilerplate, encoding, config.release),
        "reuters": lambda: reuters.read_reuters(raw, config.top_labels, encoding),
        "tmc": lambda: tmc.read_tmc(raw, encoding),
        "text": lambda: read_table(inputs, config.label_delimiter, config.test_fraction, config.seed, encoding),
    }[config.dataset]()
    return featurize_corpus(corpus, config), corpus.sources, corpus.notes


def write_output(tmp: Path, prepared: PreparedSplits, config: PrepareConfig, sources: list[Path],
                 notes: dict) -> dict:
    """Shards, vocab.json and manifest.json into `tmp`; returns the manifest."""
    digest = hashlib.sha256()
    splits = {}
    for split in SPLITS:
        table = split_table(prepared.features[split], prepared.labels[split], prepared.doc_ids[split])
        digest_split([table], digest)
        shards = write_split(tmp, split, table, config.rows_per_shard)
        splits[split] = {"documents": table.num_rows, "shards": shards}
        log(f"wrote {split}: {table.num_rows} documents in {len(shards)} shard(s)")
    return write_vocab_and_manifest(tmp, config, digest, splits, prepared.vocab, source_checksums(sources),
                                    int(prepared.features["train"].shape[1]), prepared.label_names,
                                    prepared.dropped, notes)


def write_shard(out_dir: Path, split: str, part: int, table: pa.Table) -> dict:
    """One shard file as `write_split` writes each of its parts (same name, compression and manifest entry), for a
    writer that makes the parts one at a time."""
    rel = f"{split}/part-{part:05d}.parquet"
    pq.write_table(table, out_dir / rel, compression="zstd")
    return {"path": rel, "rows": table.num_rows, "sha256": sha256_file(out_dir / rel)}


def write_vocab_and_manifest(tmp: Path, config: PrepareConfig, digest: "hashlib._Hash", splits: dict, vocab: dict,
                             sources: dict[str, str], n_features: int, label_names: list[str], dropped: dict,
                             notes: dict) -> dict:
    """vocab.json and manifest.json into `tmp`, once the shards are there and `digest` has their contents;
    returns the manifest."""
    vocab_bytes = json.dumps(vocab, sort_keys=True).encode()
    digest.update(vocab_bytes)
    (tmp / "vocab.json").write_bytes(vocab_bytes)
    params = {k: v for k, v in asdict(config).items() if k not in ("out", "raw", "overwrite", "name")}
    params["encoding"] = config.text_encoding
    manifest = {
        "format": FORMAT,
        "dataset": config.dataset_name,
        "kind": config.dataset,
        "recipe": params,
        "encoding": config.text_encoding,
        "sources": sources,
        "n_features": n_features,
        "label_names": label_names,
        "splits": splits,
        "dropped": dropped,
        "notes": notes,
        "vocab_sha256": hashlib.sha256(vocab_bytes).hexdigest(),
        "content_hash": digest.hexdigest(),
    }
    manifest = json.loads(json.dumps(manifest, default=str))  # the checksum covers what readers will see
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def build_in_process(config: PrepareConfig, inputs: list[Location], tmp: Path) -> dict:
    """Read, featurize and write everything from this process (the corpus in memory); returns the manifest."""
    prepared, sources, notes = read_and_featurize(config, inputs)
    select(prepared, config)
    check_splits({split: x.shape[0] for split, x in prepared.features.items()}, inputs[0])
    return write_output(tmp, prepared, config, sources, notes)


Build = Callable[[PrepareConfig, list[Location], Path], dict]
"""Writes shards, vocab.json and manifest.json for (config, raw input files) into a folder; returns the manifest."""


def prepare(config: PrepareConfig) -> dict:
    """Run the whole preparation in this process; returns the manifest that was written."""
    return run_prepare(config, build_in_process)


def run_prepare(config: PrepareConfig, build: Build) -> dict:
    """Check the config and --out, let `build` fill a temporary sibling of --out, then swap it into place (the
    whole folder appears at once; on any failure nothing is left behind). Returns the manifest."""
    config.validate()
    out = Path(config.out).absolute()
    if out.exists() and not config.overwrite:
        raise DataError(f"{out}: already exists; pass --overwrite to replace it")
    started = time.monotonic()
    inputs = resolve_raw_inputs(config.dataset, config.raw)
    given = [as_location(p) for p in config.raw] if isinstance(config.raw, (list, tuple)) else []
    for raw in dict.fromkeys(p for p in [*inputs, *given] if not is_uri(p) and p.exists()):
        check_not_input(out, raw)
    check_replaceable(out, config.overwrite)
    termination = _Termination()
    with termination.installed():
        tmp, created = make_temp_dir(out)
        try:
            try:
                manifest = build(config, inputs, tmp)
                with termination.held():  # --out is never left missing
                    replace_dir(tmp, out)
            except OSError as exc:  # disk full, read-only file system, quota
                raise DataError(f"{out}: writing the output failed ({exc.strerror or exc}); nothing was "
                                "written") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            _remove_empty(created)
            raise
    counts = ", ".join(f"{s} {v['documents']}" for s, v in manifest["splits"].items())
    log(f"done in {time.monotonic() - started:.1f}s: {counts}; {manifest['n_features']} features; "
        f"content hash {manifest['content_hash'][:12]} → {out}")
    return manifest


# ---------------------------------------------------------------- in passes of jobs, run by a `map`

BATCH_ROWS = 4096
"""Documents a job holds at once."""
WORK = ".work"
"""Folder inside the temporary output for what passes hand on (removed before the swap)."""
COUNTS_SCHEMA = pa.schema([("doc_id", pa.int64()), ("labels", pa.list_(pa.int32())),
                           ("indices", pa.list_(pa.int32())), ("counts", pa.list_(pa.int32()))])

Map = Callable[[Callable[[dict], dict], list[dict]], Iterable[dict]]
"""`map(function, jobs)`: the results of a pass's jobs in job order; `builtins.map`, or one Ray task a job."""


def build_in_passes(config: PrepareConfig, inputs: list[Location], tmp: Path, map: Map = map,
                    executor: str = "in process") -> dict:
    """Fill `tmp` as `build_in_process` would, from a table corpus, in four passes of jobs that `map` runs (named
    `executor` in the log); returns the manifest."""
    run = functools.partial(_run, map, executor)
    work = tmp / WORK
    work.mkdir()
    files = _scan(run, config, inputs)
    holdout = None
    if not files.has_split:
        holdout = work / "holdout.npy"
        np.save(holdout, hold_out_test(sum(files.rows), config.test_fraction, config.seed))
    jobs = [{"path": path, "file": i, "first_index": first, "work": work, "holdout": holdout,
             "label_delimiter": config.label_delimiter, "encoding": config.text_encoding, "recipe": config.recipe,
             "label_names": files.label_names}
            for i, (path, first) in enumerate(zip(files.paths, files.first_index))]

    counted = run(count_file, jobs, "count terms")
    ids = np.concatenate([np.load(work / f"ids-{i:05d}.npy") for i in range(len(jobs))])
    if len(np.unique(ids)) != len(ids):
        raise repeated_ids(inputs)
    del ids
    no_labels: dict[str, int] = {}
    labelled: Counter = Counter()
    for result in counted:
        for split, n in result["no_labels"]:
            no_labels[split] = no_labels.get(split, 0) + n
        labelled.update(result["labelled"])
    if not labelled["train"]:
        raise no_labelled_training(inputs[0])
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

    featurized = run(featurize_file, [dict(job, vocab=vocab_path) for job in jobs], "featurize")
    dropped = {"no_labels": no_labels, "too_short": {}, "too_long": {}}
    kept = {}
    for split in [s for s in SPLITS if labelled[s]]:
        per_file = [r["kept"].get(split, 0) for r in featurized]
        kept[split] = per_file
        dropped["too_short"][split] = sum(r["too_short"].get(split, 0) for r in featurized)
        dropped["too_long"][split] = sum(r["too_long"].get(split, 0) for r in featurized)
        log(f"{split}: {sum(per_file)} of {labelled[split]} documents kept ({dropped['too_short'][split]} too short, "
            f"{dropped['too_long'][split]} too long)")
    if not sum(kept.get("train", [])):
        raise empty_after_filtering(inputs[0], config.recipe)
    df = sum(np.load(work / f"df-{i:05d}.npy") for i in range(len(jobs)))
    featurizer.fit_idf_from(df, sum(kept["train"]))
    vocab_path.write_text(json.dumps(featurizer.to_json()))

    chosen = selections(config, {split: sum(per_file) for split, per_file in kept.items()})
    check_splits({split: sum(kept[source]) if rows is None else len(rows) for split, (source, rows) in chosen.items()},
                 inputs[0])
    shard_jobs = []
    for split in SPLITS:
        (tmp / split).mkdir()
        source, rows = chosen[split]
        shard_jobs += [{"split": split, "part": part, "pieces": pieces, "work": work, "out": tmp, "vocab": vocab_path,
                        "n_labels": len(files.label_names)}
                       for part, pieces in enumerate(shard_pieces(kept[source], source, rows, config.rows_per_shard))]
    entries = run(write_shard_job, shard_jobs, "transform and write shards")
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


def _run(map: Map, executor: str, function: Callable[[dict], dict], jobs: list[dict], what: str) -> list[dict]:
    """`function` over `jobs` by `map`; results in job order. A job's CorrhashError (a bad row, an unreadable file)
    or OSError (a full disk) is raised here as a DataError, the first in job order: the one a single process reading
    the files in order meets first."""
    started = time.monotonic()
    outcomes = list(map(functools.partial(_outcome, function, what), jobs))
    for outcome in outcomes:
        if "error" in outcome:
            raise DataError(outcome["error"])
    log(f"{executor}: {what}: {len(jobs)} job(s) in {time.monotonic() - started:.1f}s")
    return [outcome["ok"] for outcome in outcomes]


def _outcome(function: Callable[[dict], dict], what: str, job: dict) -> dict:
    """A job's result, or the message of its error (an error object need not travel back from a Ray worker)."""
    try:
        return {"ok": function(job)}
    except CorrhashError as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"{what}: {exc.strerror or exc}"}


@dataclass
class _Files:
    """What pass 1 found, over all files in order."""

    paths: list[Location]
    rows: list[int]
    has_split: bool
    label_names: list[str]
    sources: dict[str, str]

    @property
    def first_index(self) -> list[int]:
        return np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(int).tolist()


def _scan(run: Callable, config: PrepareConfig, inputs: list[Location]) -> _Files:
    jobs = [{"path": path, "label_delimiter": config.label_delimiter, "encoding": config.text_encoding}
            for path in inputs]
    results = run(scan_file, jobs, "scan")
    has_split = []
    for result in results:
        has_split.append(result["has_split"])
        check_same_split_column(inputs, has_split)
    labels = sorted(set().union(*(result["labels"] for result in results)))
    sources = {k: v for result in results for k, v in result["sources"].items()}
    files = _Files(inputs, [r["rows"] for r in results], has_split[0], labels, sources)
    log(f"text: {sum(files.rows)} rows, {len(labels)} labels from {len(inputs)} file(s)")
    return files


def shard_pieces(per_file: list[int], source: str, rows: np.ndarray | None, rows_per_shard: int) -> list[list[dict]]:
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


# ---- the jobs (run wherever `map` runs them: their arguments and results are plain values)

def _documents(job: dict, first_index: int = 0):
    return table_documents(as_location(job["path"]), job["label_delimiter"], job["encoding"],
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
        raise no_rows(job["path"])
    return {"rows": rows, "has_split": has_split, "labels": sorted(labels),
            "sources": source_checksums([as_location(job["path"])])}


def _splits(job: dict, documents: list[Document], first_row: int) -> list[Document]:
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
    # no_labels keeps the order in which splits first appear, as the in-memory build counts them.
    return {"n_docs": columns["n_docs"], "no_labels": list(no_labels.items()), "labelled": dict(labelled)}


def featurize_file(job: dict) -> dict:
    """Pass 3: counts of the kept documents (by split, to files) and the document frequencies of the kept train
    documents (to a file); too short and too long documents by split."""
    featurizer = TfidfFeaturizer.from_json(json.loads(Path(job["vocab"]).read_text()))
    _, documents = _documents(job, job["first_index"])
    writers, kept, too_short, too_long = {}, Counter(), Counter(), Counter()
    df = np.zeros(featurizer.n_features, dtype=np.int64)
    row = 0
    try:
        for batch in _batches(documents):
            by_split: dict[str, list[Document]] = {}
            for document in _splits(job, batch, row):
                if document.labels:
                    by_split.setdefault(document.split, []).append(document)
            row += len(batch)
            for split, docs in by_split.items():
                counts = featurizer.counts([d.text for d in docs])
                keep, short, long = length_filter(counts, job["recipe"])
                too_short[split] += short
                too_long[split] += long
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
    featurizer = TfidfFeaturizer.from_json(json.loads(Path(job["vocab"]).read_text()))
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
