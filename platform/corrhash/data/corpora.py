"""Readers that turn a raw corpus (archive, folder or table) into labelled documents.

Every reader returns a `RawCorpus`: documents in a deterministic order, each with a stable
`doc_id`, its text, its label names and its official split ("train", "test", or "val" where the
source has one). Featurization happens later and is the same for every corpus.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import html
import io
import json
import lzma
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from corrhash.data import files
from corrhash.data.files import Location
from corrhash.errors import ConfigError, DataError
from corrhash.log import log

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

DEFAULT_ENCODING = {"20ng": "latin-1", "reuters": "latin-1", "tmc": "latin-1", "text": "utf-8"}
"""How each reader decodes its raw bytes unless --encoding says otherwise: 20ng and Reuters hold a few
bytes that are not UTF-8 (see the shared data README); tables people write today are UTF-8."""


def check_encoding(encoding: str) -> None:
    """An encoding the readers can use: known to Python and ASCII-compatible (lines are split on b"\\n"
    before decoding, so that a decoding error names its line)."""
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise ConfigError(f"--encoding {encoding!r}: unknown encoding (e.g. utf-8, latin-1, cp1252)") from exc
    sample = "\n,\"{}~abcXYZ019"
    if sample.encode(encoding, errors="replace") != sample.encode("ascii"):
        raise ConfigError(f"--encoding {encoding!r}: not ASCII-compatible; convert the file to UTF-8 first")


def _undecodable(where: str, encoding: str, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{where}: byte {exc.object[exc.start]:#04x} at offset {exc.start} is not valid {encoding}; "
                     "if the file uses another encoding, pass it with --encoding (e.g. latin-1 or cp1252)")


def decode(data: bytes, encoding: str, where: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _undecodable(where, encoding, exc) from exc


_DECOMPRESS: dict[str, Callable] = {".gz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), ".xz": lzma.LZMAFile,
                                    ".bz2": bz2.BZ2File}


def open_text(path: Location, encoding: str = "utf-8") -> Iterator[str]:
    """Lines of a plain, .gz, .xz or .bz2 file (a path or a URI), each decoded with `encoding` (a leading UTF-8
    BOM is dropped); an undecodable byte is a DataError naming the line."""
    decompress = _DECOMPRESS.get(files.pure_path(path).suffix)
    first_line_encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    name = files.display(path)
    try:
        # Latin-1 maps each byte to one character, so this splits lines on \n, \r\n or \r exactly as the
        # bytes lie; each line is then decoded for real, which lets an error name its line.
        with files.open_binary(path) as raw:
            binary = decompress(raw) if decompress else raw
            with io.TextIOWrapper(binary, encoding="latin-1", newline="") as handle:
                for line_no, line in enumerate(handle, start=1):
                    line_encoding = first_line_encoding if line_no == 1 else encoding
                    yield decode(line.encode("latin-1"), line_encoding, f"{name}, line {line_no}")
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{name}: cannot read ({exc})") from exc


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


NG20_RELEASES = ("bydate", "18828")
"""The 20 Newsgroups releases `read_20ng` gives: the bydate archive as it is (18,846 posts), or the 18828 release
that semantic-hashing papers (VDSH, NASH, BMSH, CorrSH) use, rebuilt from bydate."""

_KEPT_HEADER = re.compile(r"(From|Subject):")


def release_18828_text(text: str) -> str:
    """A bydate post as the 18828 release has it: only its From: and Subject: header lines (bydate keeps
    Organization:, Lines:, NNTP-Posting-Host: ... too), then the body untouched."""
    header, _, body = text.partition("\n\n")
    kept = {}
    for line in header.split("\n"):
        match = _KEPT_HEADER.match(line)
        if match and match.group(1) not in kept:
            kept[match.group(1)] = line
    return "".join(kept[name] + "\n" for name in ("From", "Subject") if name in kept) + "\n" + body


def to_18828(documents: list[Document]) -> tuple[list[Document], dict[str, int]]:
    """The 18828 release from bydate posts: each text cut to From:, Subject: and body, and duplicates dropped.

    bydate (18,846 posts) still holds posts that are the same From:, Subject: and body once the other headers are
    gone: reposts a few days apart in one group, and cross-posts to two groups. The 18828 release has none. Two
    posts are duplicates when those three match with runs of whitespace made equal (reposts differ in
    trailing blanks); the first in (group, train before test, article number) order stays, so a repost keeps
    its earlier, train copy and a cross-post stays in the group whose name sorts first. Kept posts keep their
    bydate doc_id and split. Returns (kept documents in input order, {group: posts dropped}).

    On the published bydate archive this drops 21 posts and keeps 18,825, three fewer than the release's 18,828
    posts: the release was cut from the original 19,997 posts, not from bydate, so bydate alone cannot give it
    post for post. Exact matching (no whitespace rule) drops only 9; this rule was the closest of those tried."""
    rank = {id(doc): i for i, doc in enumerate(documents)}

    def order(doc: Document) -> tuple:
        return doc.labels[0], doc.split != "train", rank[id(doc)]

    seen: set[str] = set()
    dropped: dict[str, int] = {}
    drop: set[int] = set()
    for doc in sorted(documents, key=order):
        doc.text = release_18828_text(doc.text)
        key = " ".join(doc.text.split())
        if key in seen:
            drop.add(id(doc))
            dropped[doc.labels[0]] = dropped.get(doc.labels[0], 0) + 1
        seen.add(key)
    return [doc for doc in documents if id(doc) not in drop], dict(sorted(dropped.items()))


_NG_PATH = re.compile(r"(?:^|/)20news-bydate-(train|test)/([^/]+)/([^/]+)$")

NG20_BYDATE_POSTS = {  # group: (train, test) posts in the published 20news-bydate archive
    "alt.atheism": (480, 319), "comp.graphics": (584, 389), "comp.os.ms-windows.misc": (591, 394),
    "comp.sys.ibm.pc.hardware": (590, 392), "comp.sys.mac.hardware": (578, 385), "comp.windows.x": (593, 395),
    "misc.forsale": (585, 390), "rec.autos": (594, 396), "rec.motorcycles": (598, 398),
    "rec.sport.baseball": (597, 397), "rec.sport.hockey": (600, 399), "sci.crypt": (595, 396),
    "sci.electronics": (591, 393), "sci.med": (594, 396), "sci.space": (593, 394),
    "soc.religion.christian": (599, 398), "talk.politics.guns": (546, 364), "talk.politics.mideast": (564, 376),
    "talk.politics.misc": (465, 310), "talk.religion.misc": (377, 251),
}


def check_20ng_complete(raw: Path, posts: Counter) -> None:
    """Refuse anything but the published archive's 11,314 + 7,532 posts. tarfile reads an archive cut at
    a member boundary as a complete, shorter one, so counting is the only way to notice."""
    differences = []
    for index, split in enumerate(("train", "test")):
        expected = {group: pair[index] for group, pair in NG20_BYDATE_POSTS.items()}
        found = {group: posts.get((split, group), 0) for group in expected}
        if not any(found.values()):
            differences.insert(0, f"20news-bydate-{split}/ absent (0 of {sum(expected.values()):,})")
            continue
        absent = [group for group in expected if found[group] == 0]
        if absent:
            differences.append(f"{split}: {len(absent)} of 20 groups absent ({', '.join(absent[:3])}"
                               f"{', …' if len(absent) > 3 else ''})")
        differences += [f"{split}/{group} {found[group]} of {expected[group]}" for group in expected
                        if 0 < found[group] != expected[group]]
    differences += [f"{split}/{group} is not a bydate newsgroup" for split, group in sorted(posts)
                    if group not in NG20_BYDATE_POSTS]
    if differences:
        shown = ", ".join(differences[:6]) + (f" and {len(differences) - 6} more" if len(differences) > 6 else "")
        expected_total = sum(sum(pair) for pair in NG20_BYDATE_POSTS.values())
        raise DataError(f"{raw}: not the complete 20news-bydate archive ({sum(posts.values()):,} of "
                        f"{expected_total:,} posts; {shown}); the file may be cut short: fetch it again")


def read_20ng(raw: Path, keep_boilerplate: bool = False, encoding: str = "latin-1",
              release: str = "bydate") -> RawCorpus:
    """The bydate archive (.tar.gz/.tar.xz) or its extracted folder, checked complete; `release` "18828" turns it
    into the 18828 release (see `to_18828`), which keeps its text whole whatever `keep_boilerplate` says."""
    if release not in NG20_RELEASES:
        raise ConfigError(f"--release {release!r}: choose one of {', '.join(NG20_RELEASES)}")
    found: list[tuple[str, str, str, bytes]] = []
    for rel, data in files.iter_archive_or_folder(raw, lambda name: _NG_PATH.search(name) is not None):
        split, group, article = _NG_PATH.search(rel).groups()
        found.append((split, group, article, data))
        if len(found) % 5000 == 0:
            log(f"20ng: read {len(found)} posts from {raw.name}")
    if not found:
        raise DataError(f"{raw}: no 20news-bydate-train/ or 20news-bydate-test/ posts inside")
    check_20ng_complete(raw, Counter((split, group) for split, group, _, _ in found))
    # Article numbers repeat across groups: key by (split, group, article).
    found.sort(key=lambda item: (item[0] != "train", item[1], int(item[2]) if item[2].isdigit() else 0, item[2]))
    groups = sorted({group for _, group, _, _ in found})
    documents = []
    for doc_id, (split, group, article, data) in enumerate(found):
        text = decode(data, encoding, f"{raw}: 20news-bydate-{split}/{group}/{article}")
        if release == "bydate" and not keep_boilerplate:
            text = strip_newsgroup_footer(strip_newsgroup_quoting(strip_newsgroup_header(text)))
        documents.append(Document(doc_id, text, [group], split))
    if release == "18828":
        documents, dropped = to_18828(documents)
        log(f"20ng: 18828 release: {len(documents)} posts in {len(groups)} groups after dropping "
            f"{sum(dropped.values())} duplicates")
        return RawCorpus("20ng-18828", documents, groups, [raw],
                         {"release": "18828", "posts": len(documents), "duplicates_dropped": dropped})
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


REUTERS_DOCUMENTS = {f"reut2-{i:03d}.sgm": 1000 for i in range(21)} | {"reut2-021.sgm": 578}
"""<REUTERS> documents per file of Reuters-21578 Distribution 1.0 (21,578 in all)."""


def check_reuters_complete(raw: Path, documents: dict[str, int]) -> None:
    """Refuse a distribution with a file missing, cut short or extra (a cut archive reads as a shorter one)."""
    differences = [f"{name} has {documents[name]} of {expected} documents"
                   for name, expected in REUTERS_DOCUMENTS.items() if documents.get(name, expected) != expected]
    differences += [f"{name} missing" for name in REUTERS_DOCUMENTS if name not in documents]
    differences += [f"{name} is not part of it" for name in sorted(documents) if name not in REUTERS_DOCUMENTS]
    if differences:
        shown = ", ".join(differences[:6]) + (f" and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise DataError(f"{raw}: not the complete Reuters-21578 distribution ({sum(documents.values()):,} of "
                        f"21,578 documents in {len(documents)} of 22 reut2-NNN.sgm files; {shown})")


def read_reuters(raw: Path, top_labels: int = 20, encoding: str = "latin-1") -> RawCorpus:
    """Reuters-21578 SGML, ModApte split (LEWISSPLIT TRAIN/TEST with TOPICS="YES"), checked complete."""
    records = []
    documents_per_file: dict[str, int] = {}
    for rel, data in files.iter_archive_or_folder(raw, lambda name: re.search(r"reut2-\d+\.sgm$", name) is not None):
        documents = _REUTERS_DOC.findall(decode(data, encoding, f"{raw}: {rel}"))
        documents_per_file[rel.rsplit("/", 1)[-1]] = len(documents)
        for attrs, body in documents:
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
    if not documents_per_file:
        raise DataError(f"{raw}: no reut2-NNN.sgm files inside")
    check_reuters_complete(raw, documents_per_file)
    records.sort()
    train_counts = Counter(t for _, split, _, topics in records if split == "train" for t in topics)
    ranked = sorted(train_counts, key=lambda t: (-train_counts[t], t))
    kept = ranked[:top_labels] if top_labels > 0 else ranked
    kept_set = set(kept)
    documents = [Document(newid, text, [t for t in topics if t in kept_set], split)
                 for newid, split, text, topics in records]
    log(f"reuters: {len(records)} ModApte documents from {len(documents_per_file)} files; "
        f"keeping {len(kept)} categories")
    return RawCorpus("reuters", documents, sorted(kept), [raw],
                     {"modapte_documents": len(records), "categories_kept": kept})


# ---------------------------------------------------------------- TMC (SIAM 2007)

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


# ---------------------------------------------------------------- generic tables

PARQUET_BATCH_ROWS = 4096
"""Rows of a Parquet table read at a time (a table is streamed, never read whole)."""


def _parquet_rows(path: Location) -> tuple[list[str], Iterator[dict]]:
    import pyarrow.parquet as pq

    name = files.display(path)
    try:
        parquet = pq.ParquetFile(files.open_binary(path, random_access=True))
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{name}: not a readable Parquet file ({exc})") from exc

    def rows() -> Iterator[dict]:
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield from batch.to_pylist()
        except Exception as exc:  # a damaged page shows only when it is read
            raise DataError(f"{name}: not a readable Parquet file ({exc})") from exc
        finally:
            parquet.close()
    return parquet.schema_arrow.names, rows()


def _table_rows(path: Location, encoding: str) -> tuple[list[str], Iterator[dict]]:
    pure = files.pure_path(path)
    suffixes = "".join(pure.suffixes[-2:]).lower()
    name = files.display(path)
    if pure.suffix.lower() == ".parquet":
        return _parquet_rows(path)
    if ".jsonl" in suffixes or ".json" in suffixes:
        def rows() -> Iterator[dict]:
            for line_no, line in enumerate(open_text(path, encoding), start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{name}, line {line_no}: invalid JSON ({exc.msg})") from exc
                    if not isinstance(row, dict):
                        raise DataError(f"{name}, line {line_no}: expected a JSON object per line")
                    yield row
        first = next(rows(), None)
        columns = list(first) if first else []
        return columns, rows()
    if ".csv" in suffixes or ".tsv" in suffixes:
        delimiter = "\t" if ".tsv" in suffixes else ","
        csv.field_size_limit(2**31 - 1)  # the default 128 KiB would refuse a long document that JSONL accepts
        reader = csv.DictReader(open_text(path, encoding), delimiter=delimiter)
        try:
            columns = list(reader.fieldnames or [])
        except csv.Error as exc:
            raise DataError(f"{name}: not a readable CSV file ({exc})") from exc

        def csv_rows() -> Iterator[dict]:
            try:
                yield from reader
            except csv.Error as exc:
                raise DataError(f"{name}, line {reader.line_num}: not readable CSV ({exc})") from exc
        return columns, csv_rows()
    raise DataError(f"{name}: unknown table format (use .jsonl, .csv, .tsv or .parquet)")


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


def _parse_id(value, where: str) -> int:
    """An integer id that fits int64; 1.5, true or "x" are refused rather than truncated or guessed."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"{where}: 'id' must be an integer, got {value!r}")
    if not -2**63 <= value < 2**63:
        raise DataError(f"{where}: 'id' {value} does not fit in a signed 64-bit integer")
    return value


def table_documents(path: Location, label_delimiter: str = ",", encoding: str = "utf-8",
                    first_index: int = 0) -> tuple[bool, Iterator[Document]]:
    """(whether the table has a `split` column, its rows as documents in order), read as they stream. A row
    without an `id` gets `first_index` + its row number - 1 (the rows of earlier files come first); without a
    `split` column every document is "train" until `hold_out_test` picks the test rows."""
    name = files.display(path)
    files.require_exists(path, "text table")
    if files.is_local_dir(path):
        raise DataError(f"{path}: the text reader takes .jsonl, .csv or .parquet files, not a folder")
    columns, rows = _table_rows(path, encoding)
    missing = [c for c in ("text", "labels") if c not in columns]
    if missing:
        raise DataError(f"{name}: missing column(s) {missing}; found {columns} "
                        "(need 'text' and 'labels', optional 'split' and 'id')")
    has_split = "split" in columns

    def documents() -> Iterator[Document]:
        for row_no, row in enumerate(rows, start=1):
            where = f"{name}, row {row_no}"
            text = row.get("text")
            if not isinstance(text, str):
                raise DataError(f"{where}: 'text' must be a string, got {type(text).__name__}")
            split = "train"
            if has_split:
                split = _SPLIT_ALIASES.get(str(row.get("split", "")).strip().lower())
                if split is None:
                    raise DataError(f"{where}: unknown split {row.get('split')!r} (use train, val or test)")
            doc_id = _parse_id(row.get("id", first_index + row_no - 1), where)
            yield Document(doc_id, text, _parse_labels(row.get("labels"), label_delimiter, where), split)
    return has_split, documents()


def no_rows(path: Location) -> DataError:
    return DataError(f"{files.display(path)}: no rows")


def repeated_ids(paths: list[Location]) -> DataError:
    return DataError(f"{', '.join(map(files.display, paths))}: 'id' values repeat; each row needs a unique id")


def check_same_split_column(paths: list[Location], has_split: list[bool]) -> None:
    """Every file of a corpus has a `split` column, or none has (held-out rows are drawn over all rows)."""
    if len(set(has_split)) > 1:
        with_split = [files.display(p) for p, has in zip(paths, has_split) if has]
        without = [files.display(p) for p, has in zip(paths, has_split) if not has]
        raise DataError(f"{without[0]}: has no 'split' column but {with_split[0]} has one; give every file of "
                        "the corpus a 'split' column, or none")


def hold_out_test(n_rows: int, test_fraction: float, seed: int) -> np.ndarray:
    """Which rows (over all files, in order) become test rows when the table has no `split` column: a bool mask,
    the first round(test_fraction * n_rows) (at least 2) of a seeded permutation."""
    mask = np.zeros(n_rows, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n_rows)[:max(2, int(round(test_fraction * n_rows)))]] = True
    return mask


def read_table(raw: Location | list[Location], label_delimiter: str = ",", test_fraction: float = 0.2, seed: int = 0,
               encoding: str = "utf-8") -> RawCorpus:
    """One or several JSONL, CSV/TSV or Parquet files (read in the order given, as one table) with a `text` column,
    a `labels` column and optional `split`/`id`.

    Without a `split` column a seeded `test_fraction` of the rows becomes the test set."""
    paths = [files.as_location(p) for p in (raw if isinstance(raw, (list, tuple)) else [raw])]
    documents: list[Document] = []
    has_split = []
    for path in paths:
        has, rows = table_documents(path, label_delimiter, encoding, first_index=len(documents))
        has_split.append(has)
        check_same_split_column(paths, has_split)
        before = len(documents)
        documents.extend(rows)
        if len(documents) == before:
            raise no_rows(path)
    if len({d.doc_id for d in documents}) != len(documents):
        raise repeated_ids(paths)
    if not has_split[0]:
        for i in np.flatnonzero(hold_out_test(len(documents), test_fraction, seed)):
            documents[i].split = "test"
    names = sorted({label for d in documents for label in d.labels})
    log(f"text: {len(documents)} rows, {len(names)} labels from {', '.join(files.pure_path(p).name for p in paths)}")
    return RawCorpus("text", documents, names, paths,
                     {"split_column": has_split[0], "test_fraction": None if has_split[0] else test_fraction})
