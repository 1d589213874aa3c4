"""`corrhash.load(uri)`: a trained model from a folder, `runs:/` or `models:/` URI, as text → codes.

MLflow models are downloaded as files (by `corrhash.tracking.download`, passed in by `corrhash.load`: this
module imports no MLflow) and read as safetensors + JSON (`corrhash.artifact`): loading never unpickles
anything and never needs MLflow's pyfunc machinery. Every failure to find or read a model is a DataError
naming the folder, file or URI.

A model knows its identity (`HashingModel.identity`): the content hash of its weights, the URI it was loaded
from and, where known, its MLflow logged-model id, run and registry version (from the MLflow model's MLmodel
file, the URI, and for `models:/NAME@ALIAS` the version the alias named when it was loaded, as `resolve_alias`
from tracking says). An index it builds records that identity, so an index is searched with its own model.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from corrhash.artifact import MLFLOW_ARTIFACT_KEY, load_model, weights_sha256
from corrhash.data.device_csr import DeviceCSR
from corrhash.device import resolve_device
from corrhash.errors import DataError
from corrhash.retrieval import pack_codes

ENCODE_CHUNK = 4096


def hashing_bar(chunks, documents: int):
    """`chunks` (of ENCODE_CHUNK documents) behind a tqdm bar counting documents: on a terminal only (in a log file
    it would be a line per redraw), and not under --quiet."""
    from tqdm import tqdm

    from corrhash.log import logger

    quiet = not logger.isEnabledFor(logging.INFO)
    bar = tqdm(total=documents, desc="hashing", unit="doc", unit_scale=True, leave=False, disable=True if quiet else None)
    with bar:
        for chunk in chunks:
            yield chunk
            bar.update(min(ENCODE_CHUNK, documents - bar.n))
# Where a model came from, beside its weights' hash (HashingModel.identity); the keys an index sidecar records.
SOURCE_KEYS = ("uri", "model_id", "run_id", "registered_name", "registered_version")
ALIAS_URI = re.compile(r"models:/([^/@]+)@([^/@]+)")
VERSION_URI = re.compile(r"models:/([^/@]+)/([0-9]+)")
LOGGED_MODEL_URI = re.compile(r"models:/(m-[0-9a-f]+)")


MODEL_FILES = ("model.json", "model.safetensors", "vocab.json")
"""A corrhash model folder's files (corrhash.artifact): what is shipped to Serve replicas and Ray Data actors."""


def model_files(model: "HashingModel") -> dict[str, bytes]:
    """{file name: bytes} of a loaded model's folder, to ship it where its files are not on disk."""
    return {name: (model.directory / name).read_bytes() for name in MODEL_FILES}


def from_files(files: dict[str, bytes], device: str = "cpu") -> "HashingModel":
    """The model from its shipped files, read as corrhash.load reads a folder (safetensors and JSON only), through a
    temporary folder removed with the model."""
    folder = tempfile.TemporaryDirectory(prefix="corrhash-model-")
    for name, data in files.items():
        (Path(folder.name) / name).write_bytes(data)
    model = HashingModel(folder.name, device)
    model._files = folder  # kept alive as long as the model
    return model


class HashingModel:
    """A trained hashing model with its featurizer: `encode(texts)` → packed codes (np.packbits rows)."""

    def __init__(self, directory: str | Path, device: str = "cpu", source: dict | None = None):
        """The model in `directory`; `source` says where it came from (SOURCE_KEYS; default: the folder)."""
        self.directory = Path(directory)
        self.device = resolve_device(device)
        self.model, self.featurizer, self.info = load_model(self.directory, self.device)
        self.source = {key: str(value) for key, value in (source or {}).items() if key in SOURCE_KEYS and value}
        self.source.setdefault("uri", str(self.directory))

    @cached_property
    def weights_sha256(self) -> str:
        """The content hash of the weights (corrhash.artifact.weights_sha256): the model's identity."""
        return weights_sha256(self.model)

    @cached_property
    def vocab_sha256(self) -> str:
        """The content hash of vocab.json: the featurizer (terms and idf) is the other half of what makes a code."""
        return hashlib.sha256((self.directory / "vocab.json").read_bytes()).hexdigest()

    @property
    def identity(self) -> dict:
        """What an index built by this model records of it: weights_sha256, vocab_sha256, the uri it was loaded
        from and, where known, model_id, run_id, registered_name and registered_version."""
        return {"weights_sha256": self.weights_sha256, "vocab_sha256": self.vocab_sha256, **self.source}

    @property
    def bits(self) -> int:
        return self.model.bits

    @property
    def n_features(self) -> int:
        return self.model.n_features

    @torch.no_grad()
    def encode_features(self, features: sp.csr_matrix, progress: bool = False) -> np.ndarray:
        """Packed codes of TF-IDF rows (e.g. a prepared split's `features`); `progress`: a bar on a terminal
        (stderr) while a corpus of several chunks is hashed."""
        if features.shape[1] != self.n_features:
            raise DataError(f"{self.directory}: the model takes {self.n_features} features per document, "
                            f"got {features.shape[1]} (rows prepared with another vocabulary?)")
        rows = DeviceCSR(features, self.device)
        chunks = rows.chunks(ENCODE_CHUNK)
        if progress and len(rows) > ENCODE_CHUNK:
            chunks = hashing_bar(chunks, len(rows))
        bits = torch.cat([self.model.encode(chunk) for chunk in chunks]) if len(rows) else \
            torch.zeros((0, self.bits), dtype=torch.bool)
        return pack_codes(bits.cpu())

    def featurize(self, texts: list[str]) -> sp.csr_matrix:
        """TF-IDF rows of raw texts, exactly as in training; a row's nnz is its count of vocabulary terms."""
        if self.featurizer is None:
            raise DataError(f"{self.directory}: the model has no vocabulary to featurize text (its vocab.json "
                            "records no terms, e.g. it was trained on precomputed features); use encode_features")
        if isinstance(texts, str):
            raise TypeError("featurize takes a list of texts, not one string")
        return self.featurizer.transform(list(texts))

    def encode(self, texts: list[str]) -> np.ndarray:
        """Packed codes (uint8, [n, ceil(bits / 8)]) of raw texts, featurized exactly as in training."""
        return self.encode_features(self.featurize(texts))

    def index(self, texts: list[str] | None = None, ids=None, features: sp.csr_matrix | None = None, *,
              kind: str = "auto", calibration_queries=None, seed: int = 0, shown: dict | None = None,
              codes: np.ndarray | None = None):
        """A HammingIndex of texts (or TF-IDF rows); ids default to 0..n-1. It records this model's identity
        (meta "model"). `kind`, `seed`, `shown` (what a hit shows of each document) and `calibration_queries`
        are HammingIndex's (see corrhash.retrieval.index); the queries IVF calibrates nprobe on may be packed
        codes, TF-IDF rows or texts, and default to a sample of the index's codes. `codes`: the documents' packed
        codes, already hashed by this model (e.g. on Ray Data: runs/hash_corpus.py)."""
        from corrhash.retrieval.index import HammingIndex

        if codes is None:
            codes = self.encode_features(features if features is not None else self.featurize(texts), progress=True)
        ids = np.arange(len(codes)) if ids is None else np.asarray(ids)
        return HammingIndex(codes, ids, self.bits, {"model": self.identity}, kind=kind, seed=seed,
                            calibration_queries=self._query_codes(calibration_queries), shown=shown)

    def _query_codes(self, queries) -> np.ndarray | None:
        """Packed codes of calibration queries given as packed codes, TF-IDF rows or texts (None stays None)."""
        if queries is None or isinstance(queries, np.ndarray):
            return queries  # packed codes: HammingIndex checks their dtype and width
        if sp.issparse(queries):
            return self.encode_features(sp.csr_matrix(queries))
        if isinstance(queries, (list, tuple)) and all(isinstance(q, str) for q in queries):
            return self.encode(list(queries))
        raise TypeError("calibration_queries must be packed codes (a uint8 array), TF-IDF rows or a list of "
                        f"texts, got {type(queries).__name__}")

    def search(self, index, texts: list[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, distances) of each text in `index`."""
        return index.search(self.encode(texts), k)


def _inner_model_dir(mlflow_model: Path) -> tuple[Path | None, dict]:
    """(the corrhash folder inside an MLflow model folder, as its MLmodel file records it, and the logged model's
    model_id and run_id it records); (None, {}) if no MLmodel."""
    import yaml

    mlmodel = mlflow_model / "MLmodel"
    if not mlmodel.is_file():
        return None, {}
    try:
        spec = yaml.safe_load(mlmodel.read_text())
        entry = spec["flavors"]["python_function"]["artifacts"][MLFLOW_ARTIFACT_KEY]["path"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise DataError(f"{mlmodel}: no {MLFLOW_ARTIFACT_KEY} artifact; not a corrhash model ({exc!r})") from exc
    # The path is data from the model's author: keep it inside the model folder.
    inner = (mlflow_model / str(entry)).resolve()
    if not inner.is_relative_to(mlflow_model.resolve()):
        raise DataError(f"{mlmodel}: {MLFLOW_ARTIFACT_KEY} path {entry!r} points outside the model folder")
    recorded = spec if isinstance(spec, dict) else {}
    return inner, {key: recorded[key] for key in ("model_id", "run_id") if isinstance(recorded.get(key), str)}


def resolve_model_dir(uri: str | Path, download: Callable[[str], Path] | None = None) -> Path:
    """A local corrhash model folder for a folder path, or for an MLflow `runs:/`, `models:/` or artifact URI
    fetched by `download` (URI → local folder; `corrhash.load` passes MLflow's, which lives in tracking)."""
    return _resolve(uri, download)[0]


def _resolve(uri: str | Path, download: Callable[[str], Path] | None, fetch: str | None = None) -> tuple[Path, dict]:
    """(the model folder, what its MLmodel records: model_id, run_id); `fetch` is the URI downloaded in place of
    `uri` (a version an alias was resolved to), errors name `uri`."""
    path = Path(str(uri))
    if (path / "model.json").is_file():
        return path, {}
    inner, recorded = _inner_model_dir(path) if path.is_dir() else (None, {})
    if inner is None:
        if "://" not in str(uri) and ":/" not in str(uri):
            raise DataError(f"{uri}: not a corrhash model folder (no model.json) and not an MLflow URI")
        if download is None:
            raise DataError(f"{uri}: an MLflow URI; load it with corrhash.load, which can download it")
        inner, recorded = _inner_model_dir(download(fetch or str(uri)))
    if inner is None or not (inner / "model.json").is_file():
        raise DataError(f"{uri}: not a corrhash model (no MLmodel with a {MLFLOW_ARTIFACT_KEY} folder holding "
                        "model.json)")
    return inner, recorded


def load(uri: str | Path, device: str = "cpu", download: Callable[[str], Path] | None = None,
         resolve_alias: Callable[[str], dict] | None = None) -> HashingModel:
    """A model for hashing from a folder (or an MLflow URI, given `download`); `corrhash.load` is the entry point.
    `resolve_alias` (from tracking) says which registry version a `models:/NAME@ALIAS` names now
    ({"registered_name", "registered_version", ...}): that version is the one downloaded and recorded, so an
    alias moved meanwhile cannot make the two differ."""
    source, fetch = {"uri": str(uri)}, None
    if (alias := ALIAS_URI.fullmatch(str(uri))) and resolve_alias is not None:
        source.update(resolve_alias(str(uri)))
        fetch = f"models:/{alias.group(1)}/{source['registered_version']}"
    elif version := VERSION_URI.fullmatch(str(uri)):
        source.update(registered_name=version.group(1), registered_version=version.group(2))
    elif logged := LOGGED_MODEL_URI.fullmatch(str(uri)):
        source["model_id"] = logged.group(1)
    directory, recorded = _resolve(uri, download, fetch)
    return HashingModel(directory, device, {**recorded, **{key: value for key, value in source.items() if value}})
