"""TMC (SIAM 2007 text mining competition): the folder of its text files and +1/-1 label matrices."""

from __future__ import annotations

import re
from pathlib import Path

from corrhash.data import files
from corrhash.data.readers import Document, RawCorpus, open_text
from corrhash.errors import DataError
from corrhash.log import log


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    matches = sorted(p for p in folder.iterdir() if re.fullmatch(pattern, p.name))
    if not matches:
        raise DataError(f"{folder}: no {what} file (expected a name matching {pattern})")
    return matches[0]


def _read_sign_matrix(path: Path, encoding: str) -> list[list[int]]:
    rows = []
    for line_no, line in enumerate(open_text(path, encoding), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append([j for j, v in enumerate(line.split(",")) if int(v) > 0])
        except ValueError as exc:
            raise DataError(f"{path}, line {line_no}: expected comma-separated +1/-1 labels") from exc
    return rows


def _read_tilde_lines(path: Path, encoding: str) -> dict[int, str]:
    texts = {}
    for line_no, line in enumerate(open_text(path, encoding), start=1):
        line = line.rstrip("\r\n")
        if not line:
            continue
        ident, sep, text = line.partition("~")
        if not sep or not ident.strip().isdigit():
            raise DataError(f"{path}, line {line_no}: expected '<id>~<text>'")
        texts[int(ident)] = text
    return texts


def read_tmc(raw: Path, encoding: str = "latin-1") -> RawCorpus:
    """SIAM 2007 TMC folder: TrainingData*.txt, TrainCategoryMatrix.csv, TestData.txt, TestTruth.csv
    (each optionally .gz/.xz). Training documents whose text is missing are skipped and counted."""
    files.require_exists(raw, "TMC folder")
    if not raw.is_dir():
        raise DataError(f"{raw}: the tmc reader takes the folder holding the TMC files")
    compressed = r"(\.gz|\.xz|\.bz2)?"
    train_text = _read_tilde_lines(_find_one(raw, rf"TrainingData.*\.txt{compressed}", "training text"), encoding)
    test_text = _read_tilde_lines(_find_one(raw, rf"TestData.*\.txt{compressed}", "test text"), encoding)
    train_labels = _read_sign_matrix(_find_one(raw, rf"TrainCategoryMatrix.*\.csv{compressed}", "training labels"),
                                     encoding)
    test_labels = _read_sign_matrix(_find_one(raw, rf"TestTruth.*\.csv{compressed}", "test labels"), encoding)
    n_labels = 22
    names = [f"{j + 1:02d}" for j in range(n_labels)]
    documents = []
    skipped = 0
    for split, texts, labels, offset in (("train", train_text, train_labels, 0),
                                         ("test", test_text, test_labels, len(train_labels))):
        for row, label_ids in enumerate(labels, start=1):
            if row not in texts:
                skipped += 1
                continue
            documents.append(Document(offset + row, texts[row], [names[j] for j in label_ids], split))
    log(f"tmc: {len(documents)} documents with text; skipped {skipped} labelled documents without text")
    sources = sorted(p for p in raw.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    return RawCorpus("tmc", documents, names, sources, {"skipped_without_text": skipped})

