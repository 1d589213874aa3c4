"""A trained model on disk: weights in safetensors, everything else JSON. Nothing is pickled.

Layout: `model.safetensors` (state_dict incl. thresholds and annealing buffers), `model.json`
(format, model config, n_features, label names, data content hash, metrics) and `vocab.json`
(the featurizer, so raw text can be encoded exactly as in training; `"terms": null` when the model
has no vocabulary, e.g. trained on precomputed features). Every file is required: a folder missing
one is damaged, and loading it is a DataError naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from corrhash.atomic import atomic_dir
from corrhash.data.featurize import TfidfFeaturizer
from corrhash.errors import CorrhashError, DataError
from corrhash.models import HashModel, ModelConfig, create_model

FORMAT = "corrhash-model-v1"
# Where the model folder sits inside a logged MLflow model (tracking writes it, serve reads it).
MLFLOW_ARTIFACT_KEY = "corrhash_model"
# vocab.json of a model saved without a featurizer: it records that there is none.
NO_VOCABULARY = {"format": "none", "terms": None}
# What weights_sha256 hashes, so a hash can say which recipe made it.
WEIGHTS_HASH = "corrhash-weights-sha256-v1"


def save_model(directory: str | Path, model: HashModel, vocab: dict | None, metadata: dict | None = None) -> Path:
    """Write atomically: a temporary sibling folder renamed into place."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        info = {"format": FORMAT, "model": model.config.to_dict(), "n_features": model.n_features,
                **(metadata or {})}
        (tmp / "model.json").write_text(json.dumps(info, indent=2, default=str))
        (tmp / "vocab.json").write_text(json.dumps(NO_VOCABULARY if vocab is None else vocab))
    return directory


def load_model(directory: str | Path, device: str = "cpu") -> tuple[HashModel, TfidfFeaturizer | None, dict]:
    """(model in eval mode, featurizer or None when the model has no vocabulary, model.json)."""
    directory = Path(directory)
    info_path, weights_path = directory / "model.json", directory / "model.safetensors"
    if not info_path.is_file():
        raise DataError(f"{info_path}: not found; is {directory} a corrhash model?")
    for path in (info_path, weights_path, directory / "vocab.json"):  # files a link could swap in from elsewhere
        if path.is_symlink() and not path.resolve().is_relative_to(directory.resolve()):
            raise DataError(f"{path}: a link to {path.resolve()}, outside the model folder; a model's files are its "
                            "own (copy them in)")
    info = _read_json_object(info_path)
    if info.get("format") != FORMAT:
        raise DataError(f"{info_path}: format {info.get('format')!r}, expected {FORMAT!r}")
    n_features = info.get("n_features")
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise DataError(f"{info_path}: n_features must be a positive integer, got {n_features!r}")
    if not weights_path.is_file():
        raise DataError(f"{weights_path}: missing; the model has no weights")
    try:
        config = ModelConfig.from_dict(info["model"])
        # First on the meta device, which allocates nothing: a model.json describing absurd sizes must not make
        # this process allocate them before the weights file, whose header says what it really holds, is read.
        with torch.device("meta"):
            described = {name: tuple(t.shape) for name, t in create_model(config, n_features).state_dict().items()}
    except (KeyError, TypeError, ValueError, CorrhashError, RuntimeError) as exc:
        raise DataError(f"{info_path}: invalid model description: {_one_line(exc)}") from exc
    stored = _stored_shapes(weights_path)
    if stored != described:
        differ = sorted(name for name in set(stored) | set(described) if stored.get(name) != described.get(name))
        raise DataError(f"{weights_path}: does not hold the weights {info_path.name} describes ({len(differ)} "
                        f"tensors differ, e.g. {differ[0]}: {stored.get(differ[0])} stored, "
                        f"{described.get(differ[0])} described)")
    model = create_model(config, n_features)
    try:
        model.load_state_dict(load_file(str(weights_path), device="cpu"))
    except (RuntimeError, OSError, SafetensorError) as exc:
        raise DataError(f"{weights_path}: cannot load the weights {info_path.name} describes "
                        f"({_one_line(exc)})") from exc
    broken = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise DataError(f"{weights_path}: {broken[0]} holds NaN or infinite values; the weights are damaged")
    model.to(device).eval()
    vocab_path = directory / "vocab.json"
    if not vocab_path.is_file():
        raise DataError(f"{vocab_path}: missing; a saved model always has one (it featurizes text)")
    payload = _read_json_object(vocab_path)
    featurizer = None if payload.get("terms") is None else TfidfFeaturizer.from_json(payload, str(vocab_path))
    if featurizer is not None and featurizer.n_features != n_features:
        raise DataError(f"{vocab_path}: {featurizer.n_features} terms, but {info_path.name} says {n_features} features")
    return model, featurizer, info


def weights_sha256(model: torch.nn.Module) -> str:
    """A content hash of a model's weights (its whole state_dict: parameters, thresholds, buffers), the same
    for the same tensors however the model was saved, downloaded or placed: SHA-256 over WEIGHTS_HASH, then
    each entry in name order as its name, dtype and shape (JSON) and its raw bytes (native order: little-endian
    on x86 and ARM), each part length-prefixed."""
    digest = hashlib.sha256(WEIGHTS_HASH.encode())

    def part(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        part(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        part(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _stored_shapes(weights_path: Path) -> dict[str, tuple]:
    """{tensor name: shape} from a safetensors file's header, reading none of its data."""
    try:
        with safe_open(str(weights_path), framework="pt") as stored:
            return {name: tuple(stored.get_slice(name).get_shape()) for name in stored.keys()}
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{weights_path}: not a readable safetensors file ({_one_line(exc)})") from exc


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: invalid JSON or not UTF-8
        if isinstance(exc, RecursionError):
            raise DataError(f"{path}: not readable JSON (nested too deeply)") from None
        raise DataError(f"{path}: not readable JSON ({_one_line(exc)})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (torch's shape mismatches span several)."""
    return " ".join(str(exc).split())
