"""A Hamming index over packed codes with document ids; saved as .npz (no pickle) + JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from corrhash.errors import DataError
from corrhash.retrieval import hamming_topk


class HammingIndex:
    def __init__(self, codes: np.ndarray, ids: np.ndarray, bits: int, meta: dict | None = None):
        if len(codes) != len(ids):
            raise ValueError(f"{len(codes)} codes but {len(ids)} ids")
        self.codes, self.ids, self.bits = np.ascontiguousarray(codes, dtype=np.uint8), np.asarray(ids), bits
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query_codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(ids [q, k], Hamming distances [q, k]), nearest first, ties by index order."""
        k = min(k, len(self))
        distances, positions = hamming_topk(query_codes, self.codes, k)
        return self.ids[positions], distances

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, codes=self.codes, ids=self.ids)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({"bits": self.bits, "size": len(self), **self.meta}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HammingIndex":
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise DataError(f"{path}: no index there (need {path.name} and {meta_path.name})")
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(meta_path.read_text())
            return cls(arrays["codes"], arrays["ids"], int(meta.pop("bits")), meta)
