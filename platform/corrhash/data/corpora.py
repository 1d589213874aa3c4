"""Readers that turn a raw corpus (archive, folder or table) into labelled documents.

Every reader returns a `RawCorpus`: documents in a deterministic order, each with a stable
`doc_id`, its text, its label names and its official split ("train", "test", or "val" where the
source has one). Featurization happens later and is the same for every corpus.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import html
import json
import lzma
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from corrhash.errors import DataError
from corrhash.log import log

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val",
                  "dev": "val", "cv": "val", "test": "test"}


@dataclass
class Document:
    doc_id: int
    text: str
    labels: list[str]
    split: str


@dataclass
class RawCorpus:
    name: str
    documents: list[Document]
    label_names: list[str]
    """Every label a document may carry, in label-id order."""
    sources: list[Path]
    """The raw files read (checksummed into the manifest)."""
    notes: dict = field(default_factory=dict)
    """Reader-specific counts worth reporting (skipped documents and why)."""


# ---------------------------------------------------------------- file helpers

def open_text(path: Path) -> Iterator[str]:
    """Lines of a plain, .gz, .xz or .bz2 file, decoded as latin-1 (raw corpora are not all UTF-8)."""
    opener: Callable = open
    if path.suffix == ".gz":
        opener = gzip.open
    elif path.suffix == ".xz":
        opener = lzma.open
    elif path.suffix == ".bz2":
        opener = bz2.open
    try:
        with opener(path, "rt", encoding="latin-1", newline="") as handle:
            yield from handle
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def require_exists(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder ({what})")
    return path


def iter_archive_or_folder(root: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of the wanted files in a tar archive (any compression) or a folder."""
    require_exists(root, "raw corpus")
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if wanted(rel):
                yield rel, path.read_bytes()
        return
    try:
        with tarfile.open(root, "r:*") as archive:
            for member in archive:
                if member.isfile() and wanted(member.name):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    yield member.name, handle.read()
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{root}: not a readable tar archive or folder ({exc})") from exc


# ---------------------------------------------------------------- 20 Newsgroups

_QUOTE_LINE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


def strip_newsgroup_header(text: str) -> str:
    """Everything before the first blank line is the header (From:, Subject:, Lines: ...)."""
    return text.partition("\n\n")[2]


def strip_newsgroup_quoting(text: str) -> str:
    """Drop quoted replies and their attribution lines."""
    return "\n".join(line for line in text.split("\n") if not _QUOTE_LINE.search(line))


def strip_newsgroup_footer(text: str) -> str:
    """Drop a signature block: everything after the last line made only of dashes or blanks."""
    lines = text.strip().split("\n")
    for line_num in range(len(lines) - 1, -1, -1):
        if lines[line_num].strip().strip("-") == "":
            break
    return "\n".join(lines[:line_num]) if line_num > 0 else text


_NG_PATH = re.compile(r"(?:^|/)20news-bydate-(train|test)/([^/]+)/([^/]+)$")


def read_20ng(raw: Path, keep_boilerplate: bool = False) -> RawCorpus:
    """The bydate archive (.tar.gz/.tar.xz) or its extracted folder."""
    found: list[tuple[str, str, str, bytes]] = []
    for rel, data in iter_archive_or_folder(raw, lambda name: _NG_PATH.search(name) is not None):
        split, group, article = _NG_PATH.search(rel).groups()
        found.append((split, group, article, data))
        if len(found) % 5000 == 0:
            log(f"20ng: read {len(found)} posts from {raw.name}")
    if not found:
        raise DataError(f"{raw}: no 20news-bydate-train/ or 20news-bydate-test/ posts inside")
    # Article numbers repeat across groups: key by (split, group, article).
    found.sort(key=lambda item: (item[0] != "train", item[1], int(item[2]) if item[2].isdigit() else 0, item[2]))
    groups = sorted({group for _, group, _, _ in found})
    documents = []
    for doc_id, (split, group, _, data) in enumerate(found):
        text = data.decode("latin-1")
        if not keep_boilerplate:
            text = strip_newsgroup_footer(strip_newsgroup_quoting(strip_newsgroup_header(text)))
        documents.append(Document(doc_id, text, [group], split))
    log(f"20ng: {len(documents)} posts in {len(groups)} groups")
    return RawCorpus("20ng", documents, groups, [raw])


# ---------------------------------------------------------------- Reuters-21578

_REUTERS_DOC = re.compile(r"<REUTERS([^>]*)>(.*?)</REUTERS>", re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_TOPICS = re.compile(r"<TOPICS>(.*?)</TOPICS>", re.S)
_D = re.compile(r"<D>(.*?)</D>", re.S)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.S)
_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)
_TEXT = re.compile(r"<TEXT[^>]*>(.*?)</TEXT>", re.S)
_TAG = re.compile(r"<[^>]+>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean_sgml(fragment: str) -> str:
    return _CONTROL.sub(" ", html.unescape(_TAG.sub(" ", fragment)))


def read_reuters(raw: Path, top_labels: int = 20) -> RawCorpus:
    """Reuters-21578 SGML, ModApte split (LEWISSPLIT TRAIN/TEST with TOPICS="YES")."""
    records = []
    files = 0
    for rel, data in iter_archive_or_folder(raw, lambda name: re.search(r"reut2-\d+\.sgm$", name) is not None):
        files += 1
        for attrs, body in _REUTERS_DOC.findall(data.decode("latin-1")):
            meta = dict(_ATTR.findall(attrs))
            split = meta.get("LEWISSPLIT", "").lower()
            if meta.get("TOPICS") != "YES" or split not in ("train", "test"):
                continue
            topics_block = _TOPICS.search(body)
            topics = _D.findall(topics_block.group(1)) if topics_block else []
            title = _TITLE.search(body)
            main = _BODY.search(body) or _TEXT.search(body)
            text = " ".join(_clean_sgml(m.group(1)) for m in (title, main) if m)
            records.append((int(meta["NEWID"]), split, text, topics))
    if files == 0:
        raise DataError(f"{raw}: no reut2-NNN.sgm files inside")
    records.sort()
    train_counts = Counter(t for _, split, _, topics in records if split == "train" for t in topics)
    ranked = sorted(train_counts, key=lambda t: (-train_counts[t], t))
    kept = ranked[:top_labels] if top_labels > 0 else ranked
    kept_set = set(kept)
    documents = [Document(newid, text, [t for t in topics if t in kept_set], split)
                 for newid, split, text, topics in records]
    log(f"reuters: {len(records)} ModApte documents from {files} files; keeping {len(kept)} categories")
    return RawCorpus("reuters", documents, sorted(kept), [raw],
                     {"modapte_documents": len(records), "categories_kept": kept})


# ---------------------------------------------------------------- TMC (SIAM 2007)

def _find_one(folder: Path, pattern: str, what: str) -> Path:
    matches = sorted(p for p in folder.iterdir() if re.fullmatch(pattern, p.name))
    if not matches:
        raise DataError(f"{folder}: no {what} file (expected a name matching {pattern})")
    return matches[0]


def _read_sign_matrix(path: Path) -> list[list[int]]:
    rows = []
    for line_no, line in enumerate(open_text(path), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append([j for j, v in enumerate(line.split(",")) if int(v) > 0])
        except ValueError as exc:
            raise DataError(f"{path}, line {line_no}: expected comma-separated +1/-1 labels") from exc
    return rows


def _read_tilde_lines(path: Path) -> dict[int, str]:
    texts = {}
    for line_no, line in enumerate(open_text(path), start=1):
        line = line.rstrip("\r\n")
        if not line:
            continue
        ident, sep, text = line.partition("~")
        if not sep or not ident.strip().isdigit():
            raise DataError(f"{path}, line {line_no}: expected '<id>~<text>'")
        texts[int(ident)] = text
    return texts


def read_tmc(raw: Path) -> RawCorpus:
    """SIAM 2007 TMC folder: TrainingData*.txt, TrainCategoryMatrix.csv, TestData.txt, TestTruth.csv
    (each optionally .gz/.xz). Training documents whose text is missing are skipped and counted."""
    require_exists(raw, "TMC folder")
    if not raw.is_dir():
        raise DataError(f"{raw}: the tmc reader takes the folder holding the TMC files")
    compressed = r"(\.gz|\.xz|\.bz2)?"
    train_text = _read_tilde_lines(_find_one(raw, rf"TrainingData.*\.txt{compressed}", "training text"))
    test_text = _read_tilde_lines(_find_one(raw, rf"TestData.*\.txt{compressed}", "test text"))
    train_labels = _read_sign_matrix(_find_one(raw, rf"TrainCategoryMatrix.*\.csv{compressed}", "training labels"))
    test_labels = _read_sign_matrix(_find_one(raw, rf"TestTruth.*\.csv{compressed}", "test labels"))
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


# ---------------------------------------------------------------- generic tables

def _table_rows(path: Path) -> tuple[list[str], Iterator[dict]]:
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        return table.column_names, iter(table.to_pylist())
    if ".jsonl" in suffixes or ".json" in suffixes:
        def rows() -> Iterator[dict]:
            for line_no, line in enumerate(open_text(path), start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}, line {line_no}: invalid JSON ({exc.msg})") from exc
                    if not isinstance(row, dict):
                        raise DataError(f"{path}, line {line_no}: expected a JSON object per line")
                    yield row
        first = next(rows(), None)
        columns = list(first) if first else []
        return columns, rows()
    if ".csv" in suffixes or ".tsv" in suffixes:
        delimiter = "\t" if ".tsv" in suffixes else ","
        reader = csv.DictReader(open_text(path), delimiter=delimiter)
        try:
            columns = list(reader.fieldnames or [])
        except csv.Error as exc:
            raise DataError(f"{path}: not a readable CSV file ({exc})") from exc
        return columns, reader
    raise DataError(f"{path}: unknown table format (use .jsonl, .csv, .tsv or .parquet)")


def _parse_labels(value, delimiter: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(delimiter) if part.strip()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise DataError(f"{where}: 'labels' list must hold strings or integers, got {value!r}")
        return [str(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    raise DataError(f"{where}: 'labels' must be a list or a delimiter-separated string, "
                    f"got {type(value).__name__} {value!r}")


def read_table(raw: Path, label_delimiter: str = ",", test_fraction: float = 0.2, seed: int = 0) -> RawCorpus:
    """JSONL, CSV/TSV or Parquet with a `text` column, a `labels` column and optional `split`/`id`.

    Without a `split` column a seeded `test_fraction` of the rows becomes the test set."""
    import numpy as np

    require_exists(raw, "text table")
    if raw.is_dir():
        raise DataError(f"{raw}: the text reader takes one .jsonl, .csv or .parquet file, not a folder")
    columns, rows = _table_rows(raw)
    missing = [c for c in ("text", "labels") if c not in columns]
    if missing:
        raise DataError(f"{raw}: missing column(s) {missing}; found {columns} "
                        "(need 'text' and 'labels', optional 'split' and 'id')")
    has_split = "split" in columns
    documents = []
    for row_no, row in enumerate(rows, start=1):
        where = f"{raw}, row {row_no}"
        text = row.get("text")
        if not isinstance(text, str):
            raise DataError(f"{where}: 'text' must be a string, got {type(text).__name__}")
        split = "train"
        if has_split:
            split = _SPLIT_ALIASES.get(str(row.get("split", "")).strip().lower())
            if split is None:
                raise DataError(f"{where}: unknown split {row.get('split')!r} (use train, val or test)")
        doc_id = row.get("id", row_no - 1)
        try:
            doc_id = int(doc_id)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: 'id' must be an integer, got {doc_id!r}") from exc
        documents.append(Document(doc_id, text, _parse_labels(row.get("labels"), label_delimiter, where), split))
    if not documents:
        raise DataError(f"{raw}: no rows")
    if len({d.doc_id for d in documents}) != len(documents):
        raise DataError(f"{raw}: 'id' values repeat; each row needs a unique id")
    if not has_split:
        rng = np.random.default_rng(seed)
        n_test = max(2, int(round(test_fraction * len(documents))))
        for i in rng.permutation(len(documents))[:n_test]:
            documents[i].split = "test"
    names = sorted({label for d in documents for label in d.labels})
    log(f"text: {len(documents)} rows, {len(names)} labels from {raw.name}")
    return RawCorpus("text", documents, names, [raw],
                     {"split_column": has_split, "test_fraction": None if has_split else test_fraction})
