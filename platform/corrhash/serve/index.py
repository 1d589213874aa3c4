"""A Hamming index over packed codes with document ids; saved as .npz (no pickle) + a JSON sidecar.

Ids are integers or strings; strings are stored as a fixed-width unicode array, which np.load reads
without pickle. An index is checked when it is built and again when it is loaded, so every index
that was saved can be read back, and a damaged or foreign file is a DataError naming it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from corrhash.atomic import atomic_open, atomic_write_text
from corrhash.errors import DataError
from corrhash.retrieval import hamming_topk, packed_width


class HammingIndex:
    def __init__(self, codes: np.ndarray, ids, bits: int, meta: dict | None = None):
        self.codes, self.ids, self.bits = _checked(codes, ids, bits)
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query_codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(ids [q, k], Hamming distances [q, k]), nearest first, ties by index order; k is capped at len."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        distances, positions = hamming_topk(query_codes, self.codes, min(k, len(self)))
        return self.ids[positions], distances

    def save(self, path: str | Path) -> Path:
        """Write PATH (codes, ids) and PATH.json (bits, size, meta), each atomically."""
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if path == sidecar:
            raise DataError(f"{path}: an index named .json would be overwritten by its JSON sidecar; use .npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:
            np.savez(handle, codes=self.codes, ids=self.ids)
        atomic_write_text(sidecar, json.dumps({**self.meta, "bits": self.bits, "size": len(self)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HammingIndex":
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if path == sidecar:
            raise DataError(f"{path}: that is an index's JSON sidecar; give the .npz beside it")
        if not path.is_file() or not sidecar.is_file():
            raise DataError(f"{path}: no index there (need {path.name} and {sidecar.name})")
        meta = _read_sidecar(sidecar)
        codes, ids = _read_arrays(path)
        size = meta.pop("size", len(ids))
        if size != len(ids):
            raise DataError(f"{sidecar}: says {size} documents, but {path.name} holds {len(ids)} "
                            "(files from two different saves?)")
        try:
            return cls(codes, ids, meta.pop("bits"), meta)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None


def _checked(codes, ids, bits) -> tuple[np.ndarray, np.ndarray, int]:
    """(codes, ids, bits) if they make a searchable, saveable index; else a DataError saying why."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
        raise DataError(f"bits must be a positive integer, got {bits!r}")
    codes, ids = np.asarray(codes), np.asarray(ids)
    if codes.dtype != np.uint8:  # casting floats would search garbage
        raise DataError(f"codes must be packed uint8 bytes, got {codes.dtype}")
    if codes.ndim != 2 or codes.shape[1] != packed_width(int(bits)):
        raise DataError(f"codes have shape {codes.shape}; {bits}-bit codes need {packed_width(int(bits))} "
                        "bytes per row")
    if ids.ndim != 1 or ids.dtype.kind not in "iuU":  # anything else would be saved pickled, or not at all
        raise DataError(f"ids must be a 1-D array of integers or strings, got {ids.dtype} of shape {ids.shape}")
    if len(codes) != len(ids):
        raise DataError(f"{len(codes)} codes but {len(ids)} ids")
    if len(ids) == 0:
        raise DataError("no documents: an index needs at least one")
    return np.ascontiguousarray(codes), ids, int(bits)


def _read_sidecar(sidecar: Path) -> dict:
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8
        raise DataError(f"{sidecar}: not a readable JSON index sidecar ({exc})") from exc
    if not isinstance(meta, dict) or "bits" not in meta:
        raise DataError(f"{sidecar}: expected a JSON object with the code length in 'bits'")
    return meta


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """codes and ids of an .npz, never unpickling: object arrays and pickle files are refused."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not an .npz index ({exc})") from exc
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz index holding codes and ids")
    with arrays:
        missing = sorted({"codes", "ids"} - set(arrays.files))
        if missing:
            raise DataError(f"{path}: no {' or '.join(missing)} array; not a corrhash index")
        try:
            return arrays["codes"], arrays["ids"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # ValueError: a pickled object array
            raise DataError(f"{path}: unreadable array ({exc})") from exc

