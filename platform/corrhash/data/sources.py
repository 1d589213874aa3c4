"""Where raw corpora come from: an explicit path, $CORRHASH_RAW_DIR, or (20ng) a cached download; for `text`,
any number of table files, folders of them and glob patterns."""

from __future__ import annotations

import glob
import hashlib
import os
import urllib.request
from pathlib import Path

from corrhash.atomic import atomic_open
from corrhash.data.files import (
    Location,
    as_location,
    display,
    is_uri,
    join,
    list_uri,
    sha256_file,
)
from corrhash.errors import DataError
from corrhash.log import log

RAW_DIR_ENV = "CORRHASH_RAW_DIR"
CACHE_ENV = "CORRHASH_CACHE"
NG20_URL_ENV = "CORRHASH_20NG_URL"
# The public bydate archive as scikit-learn's fetch_20newsgroups gets it (sklearn/datasets/_twenty_newsgroups.py):
# over https, and pinned, so a swapped or damaged download is refused.
NG20_URL = "https://ndownloader.figshare.com/files/5975967"
NG20_SHA256 = "8f1b2514ca22a5ade8fbb9cfa5727df95fa587f4c87b786e15c759fa66d95610"

# Paths tried under $CORRHASH_RAW_DIR, in order (the layout of the team's shared data folder).
_CANDIDATES = {
    "20ng": ["20news-bydate/20news-bydate.tar.gz", "20news-bydate/20news-bydate.tar.xz",
             "20news-bydate.tar.gz", "20news-bydate.tar.xz"],
    "reuters": ["reuters21578/reuters21578.tar.xz", "reuters21578/reuters21578.tar.gz", "reuters21578"],
    "tmc": ["tmc"],
}
_HOW_TO_PASS = {
    "20ng": "the bydate archive with --raw PATH/20news-bydate.tar.gz (or its extracted folder)",
    "reuters": "the Reuters-21578 archive or folder of reut2-*.sgm files with --raw",
    "tmc": "the folder with TrainingData.txt, TrainCategoryMatrix.csv, TestData.txt, TestTruth.csv with --raw",
    "text": "one or more .jsonl, .csv or .parquet files (or folders, or glob patterns) with --raw",
    "mat": "a VDSH .mat file with --raw",
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "corrhash")


def download_20ng() -> Path:
    """Fetch the public bydate archive once into the cache, checked against its pinned sha256; fail with a
    message that says what to pass. A cached file that does not match is fetched again."""
    target = cache_dir() / "20news-bydate.tar.gz"
    if target.is_file():
        if sha256_file(target) == NG20_SHA256:
            return target
        log(f"{target}: sha256 is not the published archive's; fetching it again")
        target.unlink()
    url = os.environ.get(NG20_URL_ENV, NG20_URL)
    log(f"downloading {url} → {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A DataError raised inside atomic_open (wrong checksum) keeps nothing.
        with urllib.request.urlopen(url, timeout=60) as response, atomic_open(target) as handle:
            digest = hashlib.sha256()
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                handle.write(block)
            if digest.hexdigest() != NG20_SHA256:
                raise DataError(f"{url}: downloaded file has sha256 {digest.hexdigest()}, not the published "
                                f"20news-bydate.tar.gz ({NG20_SHA256}); nothing was kept. Pass "
                                f"{_HOW_TO_PASS['20ng']} if you have a good copy")
    except (OSError, ValueError) as exc:  # ValueError: a malformed $CORRHASH_20NG_URL
        raise DataError(f"could not download 20 Newsgroups from {url} ({exc}). Offline? Pass "
                        f"{_HOW_TO_PASS['20ng']}, or set {RAW_DIR_ENV} to a folder holding "
                        "20news-bydate/20news-bydate.tar.gz") from exc
    return target


def resolve_raw(dataset: str, raw: Path | None) -> Path:
    if raw is not None:
        raw = Path(raw)
        if not raw.exists():
            raise DataError(f"{raw}: no such file or folder (--raw for {dataset})")
        return raw
    base = os.environ.get(RAW_DIR_ENV)
    if base:
        for candidate in _CANDIDATES.get(dataset, []):
            path = Path(base) / candidate
            if path.exists():
                return path
    if dataset == "20ng":
        return download_20ng()
    where = f" (nothing suitable under ${RAW_DIR_ENV}={base})" if base else ""
    raise DataError(f"{dataset}: no raw input given{where}; pass {_HOW_TO_PASS[dataset]}")


TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
COMPRESSED = (".gz", ".xz", ".bz2")


def is_table_file(path: Path) -> bool:
    name = path.name.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    return name.endswith(TABLE_SUFFIXES) and not name.startswith(".")


def _expand_uri(entry: str) -> list[str]:
    """A URI's object, or the table files under a URI prefix (all depths, sorted)."""
    name = display(entry)
    try:
        found = list_uri(entry)
    except FileNotFoundError:
        raise DataError(f"{name}: no such object or prefix (--raw for text)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{name}: cannot list ({exc}) (--raw for text)") from exc
    if found is None:
        return [entry]
    tables = [rel for rel in found if is_table_file(Path(rel))]
    if not tables:
        raise DataError(f"{name}: holds no {', '.join(TABLE_SUFFIXES)} file (--raw for text)")
    return [join(entry, *rel.split("/")) for rel in tables]


def expand_tables(raw: list[Location]) -> list[Location]:
    """The table files of `--raw` entries, in the order given: a file as it is, a folder's table files (all
    depths, sorted by path), a glob pattern's matching files (sorted); a URI (`s3://...`, `file:///...`) names an
    object or a prefix holding table files. A file named twice is refused."""
    files: list[Location] = []
    for entry in raw:
        if is_uri(entry):
            if glob.has_magic(display(entry)):
                raise DataError(f"{display(entry)}: glob patterns work for local paths only; name the prefix")
            files.extend(_expand_uri(entry))
        elif not entry.exists() and glob.has_magic(str(entry)):
            matches = sorted(Path(p) for p in glob.glob(str(entry), recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{entry}: no file matches this pattern (--raw for text)")
            files.extend(matches)
        elif entry.is_dir():
            matches = sorted(p for p in entry.rglob("*") if p.is_file() and is_table_file(p))
            if not matches:
                raise DataError(f"{entry}: holds no {', '.join(TABLE_SUFFIXES)} file (--raw for text)")
            files.extend(matches)
        elif not entry.exists():
            raise DataError(f"{entry}: no such file or folder (--raw for text)")
        else:
            files.append(entry)
    seen: dict = {}
    for path in files:
        key = display(path) if is_uri(path) else path.resolve()
        if key in seen:
            raise DataError(f"{display(path)}: named twice in --raw (also as {display(seen[key])}); "
                            "each file is read once")
        seen[key] = path
    return files


def resolve_raw_inputs(dataset: str, raw: Location | list[Location] | None) -> list[Location]:
    """The raw input files or folder of a corpus: `text` takes several (see `expand_tables`) and URIs, the others
    one local path."""
    entries = [as_location(p) for p in (raw if isinstance(raw, (list, tuple)) else ([] if raw is None else [raw]))]
    if dataset == "text" and entries:
        return expand_tables(entries)
    if len(entries) > 1:
        raise DataError(f"--raw: {dataset} takes one archive, folder or file, got {len(entries)}")
    if entries and is_uri(entries[0]):
        raise DataError(f"{display(entries[0])}: {dataset} reads a local archive, folder or file; only text "
                        "reads URIs")
    return [resolve_raw(dataset, entries[0] if entries else None)]
