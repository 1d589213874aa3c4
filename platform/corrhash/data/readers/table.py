"""Text tables: JSONL, CSV/TSV or Parquet files (a path or a URI) with `text` and `labels` columns and optional
`split` and `id`, streamed row by row; both builds of data/prepare.py read them through `table_documents`."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator

import numpy as np

from corrhash.data import files
from corrhash.data.files import Location
from corrhash.data.readers import Document, RawCorpus, open_text
from corrhash.errors import DataError
from corrhash.log import log

_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val",
                  "dev": "val", "cv": "val", "test": "test"}

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

