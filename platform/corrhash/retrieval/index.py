"""A Hamming index over packed codes with document ids; saved as .npz (no pickle) + a JSON sidecar.

Ids are integers or strings; strings are stored as a fixed-width unicode array, which np.load reads
without pickle. An index is checked when it is built and again when it is loaded, so every index
that was saved can be read back, and a damaged or foreign file is a DataError naming it.

Two kinds of search:

* ``"flat"``: exact, every code compared (faiss IndexBinaryFlat on CPU, the torch matmul on CUDA).
* ``"ivf"``: faiss IndexBinaryIVF, sub-linear and approximate, its ``nprobe`` calibrated when the index is
  built to a target recall (corrhash.retrieval.ivf: how, and why recall is tie-aware). That recall is
  recorded in the JSON sidecar.

``"auto"`` (the default) is flat below ``AUTO_IVF_FROM`` codes. Above it, IVF is calibrated and kept
only if it reaches the target by probing at most ``AUTO_MAX_PROBED`` of its lists; codes without
cluster structure (uniformly random ones) need nearly all of them and stay flat, with the measurement
recorded. Why IVF, and these numbers, is in the scale benchmark (``bench/sublinear.py`` in the repository).

What the index records beside the codes, so that a saved index answers as the corpus it was hashed from did:

* the model that built it (sidecar key ``model``: ``HashingModel.identity``, the content hash of its weights
  ``weights_sha256``, the URI it was loaded from and, where known, its MLflow ``model_id``, ``run_id``,
  ``registered_name`` and ``registered_version``). Codes are only comparable with codes of the same weights:
  ``built_with`` tells whether a model is that one (corrhash.serve.corpus.index_for refuses another with an
  OtherModelError). An index saved before this was recorded has only a folder path there, and is refused
  the same way, unless overridden.
* what a hit shows of each document (``shown``: {id: {"labels": [...]}} or {id: {"text": "..."}}), in the
  .npz as the UTF-8 bytes of a JSON list in the order of ``ids`` (a uint8 array: no pickle), when there is any.

The faiss index itself is never saved: faiss's reader is C++ that trusts the sizes in its file, which
is not a format to open from someone else. The .npz keeps the IVF centroids (nlist codes); the lists
are rebuilt from them on the first search after loading, which assigns every code to the same list
(nearest centroid, ties to the lower one), so the index searched is the one whose recall was recorded.
"""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from corrhash.atomic import atomic_open, atomic_write_text
from corrhash.errors import CorrhashError, DataError
from corrhash.retrieval.codes import check_packed, packed_width
from corrhash.retrieval.hamming import faiss_flat_index, faiss_search, hamming_topk, search_backend
from corrhash.retrieval.ivf import calibrate, has_faiss, ivf_index

IndexKind = Literal["auto", "flat", "ivf"]
KINDS: tuple[str, ...] = get_args(IndexKind)
# Measured (bench/sublinear.py, 64-bit codes, k=100, one thread): at 300k codes flat answers ~5,500 q/s and
# IVF at recall 0.95 is only 2-4x faster; at 1M it is ~16x faster on clustered codes. Below this size flat
# is fast enough that IVF's build time and lost exactness buy little.
AUTO_IVF_FROM = 500_000
# At the 0.95 target clustered codes probe 1.5% of the lists at 1M, random ones 20% (2-2.5x flat): more
# than this share and IVF is not worth losing exactness for.
AUTO_MAX_PROBED = 1 / 16
SHOWN_ARRAY = "shown"  # the .npz array of what hits show: UTF-8 JSON, one entry (or null) per id
SIDECAR_ARRAY = "sidecar"  # the .npz's copy of its JSON sidecar as saved: the pair must match


class OtherModelError(CorrhashError):
    """A saved index is searched with a model other than the one that built it (or one it cannot tell)."""


class HammingIndex:
    def __init__(self, codes: np.ndarray, ids, bits: int, meta: dict | None = None, kind: str = "auto",
                 seed: int = 0, calibration_queries: np.ndarray | None = None, shown: dict | None = None):
        """Index `codes` (packed uint8 rows) under `ids`. kind: "auto", "flat" or "ivf" (see the module);
        `seed` draws IVF's training sample and, unless `calibration_queries` (packed codes like the
        queries to come, e.g. a validation split's) are given, its calibration queries from the codes.
        `meta` is what the sidecar records (its "model": the model's identity, see the module); `shown` what a
        hit shows of each document ({id: {...}}, saved with the codes)."""
        self.codes, self.ids, self.bits = _checked(codes, ids, bits)
        self.meta = dict(meta or {})
        if not isinstance(shown, (dict, type(None))):
            raise DataError(f"shown must be a dict of id -> what a hit shows, got {type(shown).__name__}")
        self.shown: dict = dict(shown or {})
        if "search" in self.meta:
            raise DataError("meta key 'search' is reserved for the index's search parameters")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.search_info: dict = {}  # what the sidecar records under "search"; {} is plain flat
        self._centroids: np.ndarray | None = None  # set for IVF
        self._faiss = None  # built on first search, never pickled or saved
        self._lock = threading.Lock()
        if self.calibrates_ivf(kind, len(self)):
            self._calibrate_ivf(seed, calibration_queries, keep_anyway=kind == "ivf")

    @staticmethod
    def calibrates_ivf(kind: str, size: int) -> bool:
        """Whether an index of this kind over `size` codes calibrates IVF when it is built: always for "ivf", for
        "auto" from AUTO_IVF_FROM codes where faiss imports (see the module). The one rule; corrhash.serve.corpus
        asks it before it samples calibration queries."""
        return kind == "ivf" or (kind == "auto" and size >= AUTO_IVF_FROM and has_faiss())

    @property
    def kind(self) -> str:
        return "ivf" if self._centroids is not None else "flat"

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        # A faiss index and a lock do not travel (Ray ships objects between processes): rebuild there.
        return {**self.__dict__, "_faiss": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def model_identity(self) -> dict | None:
        """The identity of the model that built the index (with its weights_sha256), None if it records none."""
        identity = self.meta.get("model")
        return identity if isinstance(identity, dict) and isinstance(identity.get("weights_sha256"), str) else None

    def built_with(self, identity: dict) -> bool:
        """Whether a model of this identity (HashingModel.identity) built the index: its weights' hash is the
        one recorded. False for an index that records none."""
        recorded = self.model_identity
        return recorded is not None and recorded["weights_sha256"] == identity["weights_sha256"] \
            and recorded.get("vocab_sha256", identity.get("vocab_sha256")) == identity.get("vocab_sha256")

    def describe(self) -> str:
        """The index's kind in a few words, for a job's log: flat (and why, if auto measured IVF), or IVF's probes
        and its calibrated recall."""
        info = self.search_info
        if self.kind == "flat":
            rejected = info.get("ivf_rejected")
            return "flat index, exact" + (f" (auto: ivf would probe {rejected['nprobe']} of {rejected['nlist']} lists "
                                          f"for recall@{rejected['recall']['k']} {rejected['recall']['target']})"
                                          if rejected else "")
        recall = info["recall"]
        return (f"ivf index probing {info['nprobe']} of {info['nlist']} lists, recall@{recall['k']} {recall['value']} "
                f"on {recall['queries']} {recall['sample']}")

    def search(self, query_codes: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(ids [q, k], Hamming distances [q, k]), nearest first; k is capped at len. Flat: exact, ties by
        index order. IVF: approximate, with the recall recorded in search_info."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(int(k), len(self))
        if self.kind == "flat" and search_backend() == "torch":
            distances, positions = hamming_topk(query_codes, self.codes, k, backend="torch")  # the GPU's matmul
            return self.ids[positions], distances
        queries = check_packed(query_codes, "queries_packed")
        if queries.shape[1] != self.codes.shape[1]:
            raise ValueError(f"queries have {queries.shape[1]} bytes per code, database {self.codes.shape[1]}")
        distances, positions = faiss_search(self._built(), queries, k)
        short = np.flatnonzero((positions < 0).any(axis=1))
        if len(short):  # IVF: the probed lists held fewer than k codes; answer those queries exactly
            distances[short], positions[short] = hamming_topk(queries[short], self.codes, k)
        return self.ids[positions], distances

    def save(self, path: str | Path) -> Path:
        """Write PATH (codes, ids, IVF centroids, what hits show) and PATH.json (bits, size, search, meta: the
        model), each atomically."""
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if path == sidecar:
            raise DataError(f"{path}: an index named .json would be overwritten by its JSON sidecar; use .npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        search = {"search": self.search_info} if self.search_info else {}
        sidecar_text = json.dumps({**self.meta, "bits": self.bits, "size": len(self), **search})
        # The sidecar's text goes into the .npz too: the two files are renamed into place one after the other, so a
        # failure between them (a kill, a full disk) leaves a pair from two saves, which load() then refuses.
        arrays = {"codes": self.codes, "ids": self.ids,
                  SIDECAR_ARRAY: np.frombuffer(sidecar_text.encode("utf-8"), dtype=np.uint8)}
        if self._centroids is not None:
            arrays["ivf_centroids"] = self._centroids
        if self.shown:
            entries = json.dumps([self.shown.get(doc_id) for doc_id in self.ids.tolist()], ensure_ascii=False)
            arrays[SHOWN_ARRAY] = np.frombuffer(entries.encode("utf-8"), dtype=np.uint8)
        with atomic_open(path) as handle:
            np.savez(handle, **arrays)
        atomic_write_text(sidecar, sidecar_text)
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
        recorded = dict(meta)
        codes, ids, centroids, shown, saved_with = _read_arrays(path)
        size = meta.pop("size", len(ids))
        if size != len(ids):
            raise DataError(f"{sidecar}: says {size} documents, but {path.name} holds {len(ids)} "
                            "(files from two different saves?)")
        search = meta.pop("search", {})
        try:
            index = cls(codes, ids, meta.pop("bits"), meta, kind="flat")
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        index._restore_search(search, centroids, path, sidecar)
        index.shown = _read_shown(shown, index.ids, path)
        if saved_with is not None and _sidecar_json(saved_with, path) != recorded:
            raise DataError(f"{path} and {sidecar.name} are from two different saves (the save that wrote one of them "
                            "did not finish); save the index again")
        return index

    # ------------------------------------------------------------ IVF

    def _calibrate_ivf(self, seed: int, given_queries, keep_anyway: bool) -> None:
        """Calibrate IVF (corrhash.retrieval.ivf.calibrate); keep it if asked to or if it is worth it."""
        centroids, ivf, measured = calibrate(self.codes, seed, given_queries)
        if keep_anyway or measured["nprobe"] <= AUTO_MAX_PROBED * measured["nlist"]:
            self.search_info = {"kind": "ivf", **measured}
            self._centroids, self._faiss = centroids, ivf
        else:
            self.search_info = {"kind": "flat", "ivf_rejected": {
                **measured, "why": f"reaching the target recall probes more than {AUTO_MAX_PROBED:.3g} of the lists"}}

    def _restore_search(self, search, centroids: np.ndarray | None, path: Path, sidecar: Path) -> None:
        """Take back the kind and parameters a sidecar records; DataError if the files cannot provide them."""
        if not isinstance(search, dict) or search.get("kind", "flat") not in ("flat", "ivf"):
            raise DataError(f"{sidecar}: 'search' must be an object whose kind is 'flat' or 'ivf', got {search!r}")
        self.search_info = search
        if search.get("kind", "flat") == "flat":
            return
        nlist, nprobe = search.get("nlist"), search.get("nprobe")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (nlist, nprobe)) \
                or not 1 <= nprobe <= nlist <= len(self):
            raise DataError(f"{sidecar}: an ivf index needs integers 1 <= nprobe <= nlist <= size ({len(self)}), "
                            f"got nlist={nlist!r}, nprobe={nprobe!r}")
        if centroids is None:
            raise DataError(f"{path}: {sidecar.name} says kind 'ivf', but there is no ivf_centroids array")
        if centroids.dtype != np.uint8 or centroids.shape != (nlist, self.codes.shape[1]):
            raise DataError(f"{path}: ivf_centroids must be uint8 of shape {(nlist, self.codes.shape[1])} "
                            f"(nlist from {sidecar.name}), got {centroids.dtype} {centroids.shape}")
        self._centroids = np.ascontiguousarray(centroids)

    def _built(self):
        """The faiss index searched, built once (lazily: a loaded index rebuilds it on first use)."""
        with self._lock:
            if self._faiss is None:
                if self._centroids is None:
                    self._faiss = faiss_flat_index(self.codes)
                else:
                    self._faiss = ivf_index(self.codes, self._centroids)
                    self._faiss.nprobe = self.search_info["nprobe"]
            return self._faiss


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
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):  # a hit names its document by id: one answer would list the same id k times
        raise DataError(f"ids must be unique: {int((counts > 1).sum())} repeat, e.g. {unique[counts > 1][0]!r}")
    return np.ascontiguousarray(codes), ids, int(bits)


def _read_sidecar(sidecar: Path) -> dict:
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8
        raise DataError(f"{sidecar}: not a readable JSON index sidecar ({exc})") from exc
    if not isinstance(meta, dict) or "bits" not in meta:
        raise DataError(f"{sidecar}: expected a JSON object with the code length in 'bits'")
    return meta


def _sidecar_json(array: np.ndarray, path: Path):
    """The sidecar text a save wrote into the .npz, parsed."""
    if array.dtype != np.uint8 or array.ndim != 1:
        raise DataError(f"{path}: the {SIDECAR_ARRAY} array must be 1-D uint8 (UTF-8 JSON), got {array.dtype}")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: the {SIDECAR_ARRAY} array is not UTF-8 JSON ({exc})") from exc


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None,
                                      np.ndarray | None]:
    """codes, ids, IVF centroids, what hits show and the sidecar's text as saved (None if absent) of an .npz,
    never unpickling: object arrays and pickle files are refused."""
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
            centroids = arrays["ivf_centroids"] if "ivf_centroids" in arrays.files else None
            shown = arrays[SHOWN_ARRAY] if SHOWN_ARRAY in arrays.files else None
            saved_with = arrays[SIDECAR_ARRAY] if SIDECAR_ARRAY in arrays.files else None
            return arrays["codes"], arrays["ids"], centroids, shown, saved_with
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # ValueError: a pickled object array
            raise DataError(f"{path}: unreadable array ({exc})") from exc


def _read_shown(array: np.ndarray | None, ids: np.ndarray, path: Path) -> dict:
    """{id: what its hits show} from the .npz's shown array ({} if there is none); DataError if it is not a JSON
    list of one object (or null) per id."""
    if array is None:
        return {}
    if array.dtype != np.uint8 or array.ndim != 1:
        raise DataError(f"{path}: the {SHOWN_ARRAY} array must be 1-D uint8 (UTF-8 JSON), got {array.dtype} "
                        f"of shape {array.shape}")
    try:
        entries = json.loads(array.tobytes().decode("utf-8"))
    except ValueError as exc:  # invalid JSON or not UTF-8
        raise DataError(f"{path}: the {SHOWN_ARRAY} array is not UTF-8 JSON ({exc})") from exc
    if not isinstance(entries, list) or len(entries) != len(ids) \
            or not all(entry is None or isinstance(entry, dict) for entry in entries):
        raise DataError(f"{path}: the {SHOWN_ARRAY} array must hold a JSON list of one object (or null) per id "
                        f"({len(ids)})")
    return {doc_id: entry for doc_id, entry in zip(ids.tolist(), entries) if entry is not None}
