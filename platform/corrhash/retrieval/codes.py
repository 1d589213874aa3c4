"""Binary code packing.

Layout is exactly ``np.packbits(bits, axis=1)``: bit ``j`` of a code lives in
byte ``j // 8`` at position ``7 - j % 8`` (MSB first), and the tail of the last
byte is zero-padded.  faiss ``IndexBinary*`` indexes take these bytes as-is,
because Hamming distance (popcount of XOR) does not depend on the order of bits
inside a byte.  Do not mix these codes with faiss's own packers
(``faiss.real_to_binary``), which are LSB-first.

Bit counts that are not a multiple of 8 are fine for search: both sides carry
the same zero padding, which contributes nothing to the XOR.  What faiss needs
is ``d = 8 * n_bytes``, which is what the search code passes to it; only a
caller building a faiss binary index by hand from ``n_bits`` must round up.
"""

from __future__ import annotations

import numpy as np
import torch


def packed_width(n_bits: int) -> int:
    """Bytes per packed code: ceil(n_bits / 8)."""
    return (n_bits + 7) // 8


def pack_codes(bits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pack a bool / 0-1 matrix ``[n, n_bits]`` into uint8 ``[n, ceil(n_bits/8)]``."""
    if isinstance(bits, torch.Tensor):
        bits = bits.detach().cpu().numpy()
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"codes must be 2-D [n, n_bits], got shape {bits.shape}")
    if bits.shape[1] == 0:
        raise ValueError("codes must have at least one bit")
    if bits.dtype != np.bool_:
        if not (np.issubdtype(bits.dtype, np.integer) or np.issubdtype(bits.dtype, np.floating)):
            raise ValueError(f"codes must be bool or 0/1 numbers, got dtype {bits.dtype}")
        # Refuse ±1 or real-valued activations: silently thresholding them here
        # would hide a missing sign()/>0 step upstream.
        if bits.size and not np.isin(bits, (0, 1)).all():
            raise ValueError("codes must contain only 0 and 1 (binarise before packing)")
        bits = bits.astype(np.bool_)
    return np.packbits(bits, axis=1)


def unpack_codes(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 ``[n, ceil(n_bits/8)]`` -> bool ``[n, n_bits]``."""
    packed = check_packed(packed)
    if n_bits <= 0 or packed_width(n_bits) != packed.shape[1]:
        raise ValueError(
            f"n_bits={n_bits} needs {packed_width(max(n_bits, 0))} bytes per code, "
            f"packed codes have {packed.shape[1]}"
        )
    return np.unpackbits(packed, axis=1, count=n_bits).astype(np.bool_)


def check_packed(packed: np.ndarray, name: str = "codes") -> np.ndarray:
    """Validate packed codes (2-D, uint8, >=1 byte) and return them C-contiguous."""
    if isinstance(packed, torch.Tensor):
        raise ValueError(f"{name}: expected packed numpy uint8 codes, got a torch.Tensor (use pack_codes)")
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"{name}: packed codes must be uint8, got {packed.dtype} (use pack_codes)")
    if packed.ndim != 2 or packed.shape[1] == 0:
        raise ValueError(f"{name}: packed codes must be 2-D [n, n_bytes>=1], got shape {packed.shape}")
    return np.ascontiguousarray(packed)
