"""Which torch device to compute on: the one resolver every layer uses ("auto" = CUDA when present)."""

from __future__ import annotations

import torch

from corrhash.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch.device; a CUDA device this torch cannot see is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: this torch sees {torch.cuda.device_count()} CUDA "
                          f"device(s) (build {torch.__version__}); use cpu or auto")
    return device
