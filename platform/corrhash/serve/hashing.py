"""`corrhash.load(uri)`: a trained model from a folder, `runs:/` or `models:/` URI, as text → codes.

MLflow models are downloaded as files and read as safetensors + JSON (`corrhash.artifact`): loading
never unpickles anything and never needs MLflow's pyfunc machinery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from corrhash.artifact import load_model
from corrhash.errors import DataError
from corrhash.retrieval import pack_codes
from corrhash.train.batches import DeviceCSR

# Where the corrhash model folder sits inside a logged MLflow model.
MLFLOW_ARTIFACT_KEY = "corrhash_model"
ENCODE_CHUNK = 4096


class HashingModel:
    """A trained hashing model with its featurizer: `encode(texts)` → packed codes (np.packbits rows)."""

    def __init__(self, directory: str | Path, device: str = "cpu"):
        self.directory = Path(directory)
        self.model, self.featurizer, self.info = load_model(self.directory, device)
        self.device = torch.device(device)

    @property
    def bits(self) -> int:
        return self.model.bits

    @property
    def label_names(self) -> list[str]:
        return list(self.info.get("label_names", []))

    @torch.no_grad()
    def encode_features(self, features: sp.csr_matrix) -> np.ndarray:
        """Packed codes of TF-IDF rows (e.g. a prepared split's `features`)."""
        rows = DeviceCSR(features, self.device)
        bits = torch.cat([self.model.encode(chunk) for chunk in rows.chunks(ENCODE_CHUNK)]) if len(rows) else \
            torch.zeros((0, self.bits), dtype=torch.bool)
        return pack_codes(bits.cpu())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Packed codes (uint8, [n, ceil(bits / 8)]) of raw texts, featurized exactly as in training."""
        if self.featurizer is None:
            raise DataError(f"{self.directory}: this model was trained on precomputed features; "
                            "it has no vocabulary to featurize text (use encode_features)")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        return self.encode_features(self.featurizer.transform(list(texts)))


    def index(self, texts: list[str] | None = None, ids=None, features: sp.csr_matrix | None = None):
        """A HammingIndex of texts (or TF-IDF rows); ids default to 0..n-1."""
        from corrhash.serve.index import HammingIndex

        codes = self.encode_features(features) if features is not None else self.encode(texts)
        ids = np.arange(len(codes)) if ids is None else np.asarray(ids)
        return HammingIndex(codes, ids, self.bits, {"model": str(self.directory)})

    def search(self, index, texts: list[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, distances) of each text in `index`."""
        return index.search(self.encode(texts), k)


def _inner_model_dir(mlflow_model: Path) -> Path | None:
    """The corrhash folder inside an MLflow model folder, as its MLmodel file records it."""
    import yaml

    mlmodel = mlflow_model / "MLmodel"
    if not mlmodel.is_file():
        return None
    spec = yaml.safe_load(mlmodel.read_text())
    entry = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get(MLFLOW_ARTIFACT_KEY)
    return mlflow_model / entry["path"] if entry else None


def resolve_model_dir(uri: str | Path) -> Path:
    """A local corrhash model folder for a folder path, or an MLflow `runs:/`, `models:/` or artifact URI."""
    path = Path(str(uri))
    if (path / "model.json").is_file():
        return path
    inner = _inner_model_dir(path) if path.is_dir() else None
    if inner is None:
        if "://" not in str(uri) and ":/" not in str(uri):
            raise DataError(f"{uri}: not a corrhash model folder (no model.json) and not an MLflow URI")
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(uri)))
        inner = _inner_model_dir(local)
    if inner is None or not (inner / "model.json").is_file():
        raise DataError(f"{uri}: an MLflow model, but not a corrhash one (no {MLFLOW_ARTIFACT_KEY} artifact)")
    return inner


def load(uri: str | Path, device: str = "cpu") -> HashingModel:
    """Load a model for hashing: `corrhash.load("models:/corrhash-20ng-64b@champion").encode(["text"])`."""
    return HashingModel(resolve_model_dir(uri), device)
