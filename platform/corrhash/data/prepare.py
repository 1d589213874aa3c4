"""Raw corpus → Parquet TF-IDF shards + vocab.json + manifest.json, written atomically.

`prepare` does it in this process; `run_prepare` is the frame (checks, temporary folder, SIGTERM, the swap into
place) that data/prepare_ray.py fills in with Ray Data, and `write_vocab_and_manifest` the common ending, so both
write the same files."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import tyro

from corrhash.atomic import remove_stale_siblings, replace_dir, sibling_temp_dir
from corrhash.data import corpora, uri
from corrhash.data.featurize import TfidfFeaturizer, TfidfRecipe
from corrhash.data.shards import (FORMAT, SPLITS, digest_split, manifest_checksum, sha256_file, split_table,
                                  write_split)
from corrhash.data.sources import resolve_raw_inputs
from corrhash.errors import ConfigError, DataError
from corrhash.log import log

DATASETS = ("20ng", "reuters", "tmc", "text", "mat")


@dataclass
class PrepareConfig:
    dataset: Annotated[Literal[DATASETS], tyro.conf.Positional]  # type: ignore[valid-type]
    """Corpus kind: 20ng, reuters, tmc, text (JSONL/CSV/Parquet) or mat (VDSH .mat file)."""
    out: Path
    """Output folder (must not exist unless --overwrite); built in a temporary sibling and renamed into place."""
    raw: Annotated[Path | list[Path | str] | None,
                   tyro.conf.arg(constructor_factory=lambda: list[str] | None, metavar="PATH|URI [...]",
                                 help_behavior_hint="(default: None)")] = None
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
    release: Literal[corpora.NG20_RELEASES] = "bydate"  # type: ignore[valid-type]
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
        """The name written into the manifest: the corpus kind, with the 20ng release when it is not bydate,
        so that shards of the two releases are told apart in runs, tags and registered model names."""
        return f"{self.dataset}-{self.release}" if self.release != "bydate" else self.dataset

    @property
    def text_encoding(self) -> str | None:
        """The encoding the reader uses (None for mat, which holds no text)."""
        return self.encoding or corpora.DEFAULT_ENCODING.get(self.dataset)

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if self.release not in corpora.NG20_RELEASES:
            raise ConfigError(f"--release {self.release!r}: choose one of {', '.join(corpora.NG20_RELEASES)}")
        if self.release != "bydate" and self.dataset != "20ng":
            raise ConfigError(f"--release {self.release} applies to 20ng only, not {self.dataset}")
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
            corpora.check_encoding(self.encoding)
        r = self.recipe
        if r.min_tokens > r.max_tokens:
            raise ConfigError(f"--min-tokens {r.min_tokens} exceeds --max-tokens {r.max_tokens}")
        if not 0 < r.max_df <= 1:
            raise ConfigError(f"--max-df {r.max_df}: must be in (0, 1]")
        if r.min_df < 0:
            raise ConfigError(f"--min-df {r.min_df}: must be >= 0")
        if r.max_features is not None and r.max_features < 1:
            raise ConfigError(f"--max-features {r.max_features}: must be >= 1")


@dataclass
class PreparedSplits:
    """Features, labels and ids per split, before they are written."""

    features: dict[str, sp.csr_matrix]
    labels: dict[str, sp.csr_matrix]
    doc_ids: dict[str, np.ndarray]
    label_names: list[str]
    vocab: dict
    dropped: dict


def source_checksums(sources: list[corpora.Location]) -> dict[str, str]:
    """{file (a URI without its query): sha256} of the raw inputs, a folder's files one by one."""
    files = []
    for source in sources:
        if not uri.is_uri(source) and source.is_dir():
            files.extend(sorted(p for p in source.rglob("*") if p.is_file()))
        else:
            files.append(source)
    return {corpora.location_name(p): sha256_file(p) if not uri.is_uri(p) else corpora.sha256_location(p)
            for p in files}


def label_matrix(label_lists: list[list[str]], names: list[str]) -> sp.csr_matrix:
    index = {name: i for i, name in enumerate(names)}
    rows = [sorted({index[label] for label in labels}) for labels in label_lists]
    indptr = np.cumsum([0] + [len(row) for row in rows])
    cols = np.array([c for row in rows for c in row], dtype=np.int32)
    return sp.csr_matrix((np.ones(len(cols), dtype=bool), cols, indptr), shape=(len(rows), len(names)))


def halve_test(doc_ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the official test rows with `seed` and halve them: (val rows, test rows), each sorted."""
    order = np.random.default_rng(seed).permutation(len(doc_ids))
    half = len(order) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def featurize_corpus(corpus: corpora.RawCorpus, config: PrepareConfig) -> PreparedSplits:
    recipe = config.recipe
    dropped = {"no_labels": {}, "too_short": {}, "too_long": {}}
    by_split: dict[str, list[corpora.Document]] = {s: [] for s in SPLITS}
    for doc in corpus.documents:
        if not doc.labels:
            dropped["no_labels"][doc.split] = dropped["no_labels"].get(doc.split, 0) + 1
            continue
        by_split[doc.split].append(doc)
    if not by_split["train"]:
        raise DataError(f"{corpora.location_name(corpus.sources[0])}: no labelled training documents")
    log(f"fitting vocabulary on {len(by_split['train'])} train documents")
    featurizer = TfidfFeaturizer.fit_vocabulary([d.text for d in by_split["train"]], recipe)
    kept_counts, kept_docs = {}, {}
    for split, docs in by_split.items():
        if not docs:
            continue
        counts = featurizer.counts([d.text for d in docs])
        n_tokens = np.asarray(counts.sum(axis=1)).ravel()
        keep = (n_tokens >= recipe.min_tokens) & (n_tokens <= recipe.max_tokens)
        dropped["too_short"][split] = int((n_tokens < recipe.min_tokens).sum())
        dropped["too_long"][split] = int((n_tokens > recipe.max_tokens).sum())
        kept_counts[split] = counts[keep]
        kept_docs[split] = [d for d, k in zip(docs, keep) if k]
        log(f"{split}: {keep.sum()} of {len(docs)} documents kept "
            f"({dropped['too_short'][split]} too short, {dropped['too_long'][split]} too long)")
    if not kept_docs.get("train"):
        raise DataError(f"{corpora.location_name(corpus.sources[0])}: corpus is empty after filtering (no train "
                        f"document has {recipe.min_tokens}..{recipe.max_tokens} in-vocabulary tokens)")
    featurizer.fit_idf(kept_counts["train"])
    features = {s: featurizer.tfidf(c) for s, c in kept_counts.items()}
    doc_ids = {s: np.array([d.doc_id for d in docs], dtype=np.int64) for s, docs in kept_docs.items()}
    labels = {s: label_matrix([d.labels for d in docs], corpus.label_names) for s, docs in kept_docs.items()}
    if "val" not in features and "test" in features:
        val_rows, test_rows = halve_test(doc_ids["test"], config.seed)
        for target, rows in (("val", val_rows), ("test", test_rows)):
            features[target], labels[target] = features["test"][rows], labels["test"][rows]
            doc_ids[target] = doc_ids["test"][rows]
    return PreparedSplits(features, labels, doc_ids, corpus.label_names, featurizer.to_json(), dropped)


def read_mat(path: Path) -> PreparedSplits:
    """VDSH benchmark .mat: `train`, `test`, `cv` TF-IDF matrices and `gnd_*` 0/1 label matrices."""
    import scipy.io

    corpora.require_exists(path, ".mat file")
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; re-save with -v7") from exc
    except (ValueError, OSError, TypeError, scipy.io.matlab.MatReadError) as exc:
        raise DataError(f"{path}: not a readable .mat file ({exc or type(exc).__name__})") from exc
    found = sorted(k for k in mat if not k.startswith("__"))
    missing = [k for k in ("train", "test", "cv", "gnd_train", "gnd_test", "gnd_cv") if k not in mat]
    if missing:
        raise DataError(f"{path}: missing variable(s) {missing}; found {found}")
    features, labels, doc_ids, dropped = {}, {}, {}, {"no_labels": {}, "empty": {}}
    offset = 0
    n_labels = None
    for key in ("train", "cv", "test", "gnd_train", "gnd_cv", "gnd_test"):
        value = mat[key]
        if not (sp.issparse(value) or (isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
                                       and value.ndim == 2)):
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise DataError(f"{path}: variable {key!r} must be a numeric 2-D matrix, got {kind} "
                            "(a cell, char or struct array?)")
    for split, key in (("train", "train"), ("val", "cv"), ("test", "test")):
        x = sp.csr_matrix(mat[key], dtype=np.float64)
        bad = ~np.isfinite(x.data) | (x.data < 0)
        if bad.any():  # TfidfShards refuses such rows; say so here, by row
            row = int(np.searchsorted(x.indptr, np.argmax(bad), side="right"))
            raise DataError(f"{path}: {key}, row {row}: value {x.data[np.argmax(bad)]} "
                            "(TF-IDF values must be finite and >= 0)")
        y = np.asarray(sp.csr_matrix(mat[f"gnd_{key}"]).toarray())
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{path}: gnd_{key} has {y.shape[0]} rows but {key} has {x.shape[0]}")
        if n_labels is not None and y.shape[1] != n_labels:
            raise DataError(f"{path}: gnd_{key} has {y.shape[1]} label columns, gnd_train has {n_labels}")
        n_labels = y.shape[1]
        if not np.isin(y, (0, 1)).all():
            raise DataError(f"{path}: gnd_{key} must hold 0/1 labels")
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        has_labels = y.sum(axis=1) > 0
        keep = (norms > 0) & has_labels
        dropped["no_labels"][split] = int((~has_labels).sum())
        dropped["empty"][split] = int(((norms == 0) & has_labels).sum())
        x = (sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ x)[keep].astype(np.float32).tocsr()
        x.sort_indices()
        features[split] = x
        labels[split] = sp.csr_matrix(y[keep].astype(bool))
        doc_ids[split] = offset + np.flatnonzero(keep).astype(np.int64)
        offset += len(keep)
    n_features = features["train"].shape[1]
    for split, x in features.items():
        if x.shape[1] != n_features:
            raise DataError(f"{path}: split {split} has {x.shape[1]} features, train has {n_features}")
    names = [str(i) for i in range(n_labels)]
    vocab = {"format": "precomputed", "terms": None, "idf": None, "n_features": n_features,
             "note": "features came pre-computed from a .mat file; raw text cannot be featurized"}
    log(f"mat: {', '.join(f'{s} {x.shape[0]}' for s, x in features.items())} documents, {n_features} features")
    return PreparedSplits(features, labels, doc_ids, names, vocab, dropped)


def sample_splits(prepared: PreparedSplits, limit: int, seed: int) -> None:
    """Keep at most `limit` documents per split, chosen with `seed`, in their original order."""
    rng = np.random.default_rng(seed)
    for split, features in prepared.features.items():
        if features.shape[0] > limit:
            rows = np.sort(rng.choice(features.shape[0], limit, replace=False))
            prepared.features[split], prepared.labels[split] = features[rows], prepared.labels[split][rows]
            prepared.doc_ids[split] = prepared.doc_ids[split][rows]


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
        remove_stale_siblings(out)
        return sibling_temp_dir(out), created
    except OSError as exc:
        _remove_empty(created)
        raise DataError(f"{out}: cannot write the output there (--out): {exc.strerror or exc}") from exc


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def read_and_featurize(config: PrepareConfig, inputs: list[corpora.Location]) -> tuple[PreparedSplits, list, dict]:
    """(prepared splits, source files, reader notes)."""
    raw = inputs[0]
    log(f"reading {config.dataset} from {', '.join(map(corpora.location_name, inputs))}")
    if config.dataset == "mat":
        return read_mat(raw), [raw], {}
    encoding = config.text_encoding
    corpus = {
        "20ng": lambda: corpora.read_20ng(raw, config.keep_boilerplate, encoding, config.release),
        "reuters": lambda: corpora.read_reuters(raw, config.top_labels, encoding),
        "tmc": lambda: corpora.read_tmc(raw, encoding),
        "text": lambda: corpora.read_table(inputs, config.label_delimiter, config.test_fraction, config.seed, encoding),
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
    params = {k: v for k, v in asdict(config).items() if k not in ("out", "raw", "overwrite")}
    params["encoding"] = config.text_encoding
    manifest = {
        "format": FORMAT,
        "dataset": config.dataset_name,
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


def build_in_process(config: PrepareConfig, inputs: list[corpora.Location], tmp: Path) -> dict:
    """Read, featurize and write everything from this process (the corpus in memory); returns the manifest."""
    prepared, sources, notes = read_and_featurize(config, inputs)
    if config.limit is not None:
        sample_splits(prepared, config.limit, config.seed)
    for split in SPLITS:
        if prepared.features.get(split) is None or prepared.features[split].shape[0] == 0:
            raise DataError(f"{corpora.location_name(inputs[0])}: split {split!r} has no documents after filtering")
    return write_output(tmp, prepared, config, sources, notes)


Build = Callable[[PrepareConfig, list[corpora.Location], Path], dict]
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
    given = [corpora.as_location(p) for p in config.raw] if isinstance(config.raw, (list, tuple)) else []
    for raw in dict.fromkeys(p for p in [*inputs, *given] if not uri.is_uri(p) and p.exists()):
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
