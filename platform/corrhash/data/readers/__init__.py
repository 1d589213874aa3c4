"""Readers that turn a raw corpus (archive, folder, table or .mat file) into what preparation featurizes, one module
per corpus: ng20, reuters, tmc, table (JSONL/CSV/Parquet text tables) and mat (VDSH's pre-computed features).

A text reader returns a `RawCorpus`: documents in a deterministic order, each with a stable `doc_id`, its text,
its label names and its official split ("train", "test", or "val" where the source has one); featurization happens
later and is the same for every corpus. The mat reader returns `PreparedSplits` (its features come computed). This
module holds what the readers share: those types and the decoding of raw bytes. Files are opened through
data/files.py.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from corrhash.data import files
from corrhash.data.files import Location
from corrhash.errors import ConfigError, DataError


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



@dataclass
class PreparedSplits:
    """Features, labels and ids per split, before they are written."""

    features: dict[str, sp.csr_matrix]
    labels: dict[str, sp.csr_matrix]
    doc_ids: dict[str, np.ndarray]
    label_names: list[str]
    vocab: dict
    dropped: dict


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

