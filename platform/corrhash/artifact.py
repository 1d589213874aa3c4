"""A trained model on disk: weights in safetensors, everything else JSON. Nothing is pickled.

Layout: `model.safetensors` (state_dict incl. thresholds and annealing buffers), `model.json`
(format, model config, n_features, label names, data content hash, metrics) and `vocab.json`
(the featurizer, so raw text can be encoded exactly as in training).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from corrhash.data.featurize import TfidfFeaturizer
from corrhash.errors import DataError
from corrhash.models import HashModel, ModelConfig, create_model

FORMAT = "corrhash-model-v1"


def save_model(directory: str | Path, model: HashModel, vocab: dict | None, metadata: dict | None = None) -> Path:
    """Write atomically: a temporary sibling folder renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        info = {"format": FORMAT, "model": model.config.to_dict(), "n_features": model.n_features,
                **(metadata or {})}
        (tmp / "model.json").write_text(json.dumps(info, indent=2, default=str))
        if vocab is not None:
            (tmp / "vocab.json").write_text(json.dumps(vocab))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_model(directory: str | Path, device: str = "cpu") -> tuple[HashModel, TfidfFeaturizer | None, dict]:
    """(model in eval mode, featurizer or None when features were precomputed, model.json)."""
    directory = Path(directory)
    info_path = directory / "model.json"
    if not info_path.is_file():
        raise DataError(f"{info_path}: not found; is {directory} a corrhash model?")
    info = json.loads(info_path.read_text())
    if info.get("format") != FORMAT:
        raise DataError(f"{info_path}: format {info.get('format')!r}, expected {FORMAT!r}")
    model = create_model(ModelConfig.from_dict(info["model"]), int(info["n_features"]))
    model.load_state_dict(load_file(str(directory / "model.safetensors"), device="cpu"))
    model.to(device).eval()
    featurizer = None
    vocab_path = directory / "vocab.json"
    if vocab_path.is_file():
        payload = json.loads(vocab_path.read_text())
        if payload.get("terms") is not None:
            featurizer = TfidfFeaturizer.from_json(payload, str(vocab_path))
    return model, featurizer, info
