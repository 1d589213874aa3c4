"""VDSH's benchmark .mat files: TF-IDF matrices and 0/1 label matrices per split, computed already, so this reader
gives `PreparedSplits` (rows L2-normalized, unlabelled and empty rows dropped) rather than documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from corrhash.data.files import require_exists
from corrhash.data.readers import PreparedSplits
from corrhash.errors import DataError
from corrhash.log import log


def read_mat(path: Path) -> PreparedSplits:
    """VDSH benchmark .mat: `train`, `test`, `cv` TF-IDF matrices and `gnd_*` 0/1 label matrices."""
    import scipy.io

    require_exists(path, ".mat file")
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
