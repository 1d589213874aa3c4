"""The one file-access layer: every file the data floor reads or writes is a local path or a URI, named and opened
here, so that the readers and the shard format carry no local-vs-URI branches of their own.

`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://host/path` and `file:///path` go through
`pyarrow.fs.FileSystem.from_uri`, so credentials and endpoints come from the usual environment
(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...) or from the URI's query
(`?endpoint_override=host:port&scheme=http`). A URI is logged (MLflow params and tags, Ray's state), so
one holding credentials (`access_key=`, `secret_key=`, `session_token=`) is refused; messages still show a
URI through `display`, without its query. Local paths keep pathlib (and its error messages); pyarrow is
imported only when a URI is met, so that the job frame naming paths does not load it.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import parse_qs

from corrhash.errors import DataError

SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
SECRET_PARAMETERS = {"access_key", "secret_key", "session_token"}  # pyarrow's S3 URI options that are secrets

Location = Path | str
"""A local path, or a URI string (`s3://...`, `gs://...`, `file:///...`)."""

# ---------------------------------------------------------------- names


def is_uri(location: str | Path) -> bool:
    return isinstance(location, str) and SCHEME.match(location) is not None


def as_location(value: str | Path) -> Location:
    """A URI stays a string (a Path would fold its `//`); anything else becomes a Path."""
    return value if is_uri(value) else Path(value)


def absolute(location: str | Path) -> str:
    """A URI unchanged; a path made absolute (relative to the working dir)."""
    return str(location) if is_uri(location) else os.path.abspath(location)


def join(location: str | Path, *parts: str) -> str:
    """`location/part/...`: for a URI the parts go before its query."""
    if not is_uri(location):
        return os.path.join(location, *parts)
    base, sep, query = str(location).partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def display(location: str | Path) -> str:
    """How messages and manifests name a location: the path, or the URI without its query (which may carry
    credentials)."""
    return str(location).partition("?")[0] if is_uri(location) else str(location)


def pure_path(location: Location) -> PurePosixPath:
    """The location's path, for its name and suffixes."""
    return PurePosixPath(display(location))


def local_path(location: str | Path) -> str | None:
    """The absolute local path of a plain path or a file:// URI; None for a remote URI. A local path is
    seen by the node that reads it only: on a multi-node cluster it must be on a shared filesystem."""
    if not is_uri(location):
        return os.path.abspath(location)
    if str(location).startswith("file://"):
        from pyarrow.fs import FileSystem

        return FileSystem.from_uri(str(location))[1]
    return None


def secrets_in(location: str | Path) -> list[str]:
    """The credential parameters in a URI's query (none for a path)."""
    query = str(location).partition("?")[2] if is_uri(location) else ""
    return sorted(SECRET_PARAMETERS & set(parse_qs(query)))


def filesystem(location: str):
    """(pyarrow FileSystem, path inside it) of a URI; raises OSError, or ValueError for an unknown scheme or
    credentials in the URI."""
    from pyarrow.fs import FileSystem

    if secrets_in(location):
        raise ValueError(f"credentials in the URI ({', '.join(secrets_in(location))}) would be logged with it; "
                         "pass them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) instead")
    return FileSystem.from_uri(location)


# ---------------------------------------------------------------- one file, a path or a URI


def _arrow_error() -> type[BaseException]:
    """pyarrow's exception base, imported when an error is caught (an `except` clause is evaluated only then)."""
    import pyarrow as pa

    return pa.ArrowException


def open_binary(location: Location, random_access: bool = False) -> BinaryIO:
    """A local file, or a URI's object through pyarrow.fs (streamed; `random_access` for Parquet). A URI that
    cannot be opened is a DataError; a local file raises what `open` raises."""
    if not is_uri(location):
        return open(location, "rb")
    try:
        fs, path = filesystem(location)
        return fs.open_input_file(path) if random_access else fs.open_input_stream(path, compression=None)
    except (OSError, ValueError, _arrow_error()) as exc:
        raise DataError(f"{display(location)}: cannot read ({exc})") from exc


def sha256_file(location: Location) -> str:
    """sha256 of a file's bytes (a raw input, a shard file, a download), read a block at a time."""
    digest = hashlib.sha256()
    with open_binary(location) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_exists(location: Location, what: str) -> Location:
    """A local path that exists; a URI passes (it is checked when opened: a listing first would cost a request)."""
    if not is_uri(location) and not location.exists():
        raise DataError(f"{location}: no such file or folder ({what})")
    return location


def is_local_dir(location: Location) -> bool:
    """A local folder (a URI names objects or prefixes, which the readers never take for folders)."""
    return not is_uri(location) and location.is_dir()


def list_uri(location: str) -> list[str] | None:
    """The files under a URI prefix, as paths relative to it (all depths, sorted); None when the URI is one
    object. Raises FileNotFoundError when it is neither, OSError or ValueError when it cannot be listed."""
    from pyarrow.fs import FileSelector, FileType

    try:
        fs, path = filesystem(location)
        info = fs.get_file_info(path)
        if info.type == FileType.File:
            return None
        if info.type == FileType.NotFound:
            raise FileNotFoundError(path)
        found = fs.get_file_info(FileSelector(path, recursive=True))
    except _arrow_error() as exc:
        raise OSError(str(exc)) from exc
    root = path.rstrip("/")
    return sorted(f.path[len(root) + 1:] for f in found if f.type == FileType.File)


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


# ---------------------------------------------------------------- a folder of files, a path or a URI prefix


class Folder:
    """A local folder or a URI prefix whose filesystem is resolved once (a shard set's files are many): its files
    are Paths under a local folder, URI strings (without the query) under a URI. Reads raise OSError; the caller
    names what it was reading."""

    def __init__(self, location: str | Path):
        """Raises OSError, ValueError or pyarrow's ArrowException when a URI's filesystem cannot be opened."""
        self.local = not is_uri(location)
        if self.local:
            self.root: Location = Path(location)
            self._fs, self._path = None, os.path.abspath(location)
        else:
            self.root = display(location).rstrip("/")
            self._fs, self._path = filesystem(str(location))
            self._path = self._path.rstrip("/")

    def at(self, rel: str | PurePosixPath) -> Location:
        return self.root / rel if self.local else f"{self.root}/{PurePosixPath(rel)}"

    def member(self, location: str | Path) -> Location:
        """A file of this folder as given (a string or a Path), as `at` names it."""
        return Path(location) if self.local else str(location)

    def key(self, location: Location) -> Location:
        """A file's name for lookups: an absolute path, or the URI `at` makes."""
        return Path(os.path.abspath(location)) if self.local else str(location)

    def _inside(self, location: Location) -> str:
        """The path of one of this folder's files inside the filesystem."""
        return self._path + str(location)[len(str(self.root)):]

    def _filesystem(self):
        if self._fs is None:  # only writes and listings go through pyarrow for a local folder
            from pyarrow.fs import LocalFileSystem

            self._fs = LocalFileSystem()
        return self._fs

    def is_file(self, location: Location) -> bool:
        """Whether the file exists; a URI that cannot be asked (credentials, network, a missing bucket) is a
        DataError."""
        if self.local:
            return Path(location).is_file()
        from pyarrow.fs import FileType

        try:
            return self._fs.get_file_info(self._inside(location)).type == FileType.File
        except (OSError, _arrow_error()) as exc:
            raise DataError(f"{location}: cannot read ({exc})") from exc

    def read_bytes(self, location: Location) -> bytes:
        """The whole file."""
        if self.local:
            return Path(location).read_bytes()
        try:
            with self._fs.open_input_stream(self._inside(location)) as stream:
                return stream.read()
        except _arrow_error() as exc:
            raise OSError(str(exc)) from exc

    def open_file(self, location: Location) -> BinaryIO:
        """A random-access handle (a remote file then reads only the ranges asked for: a Parquet footer, a column)."""
        return open(location, "rb") if self.local else self._fs.open_input_file(self._inside(location))

    def is_empty(self) -> bool:
        """Whether nothing lies under the folder (or it does not exist)."""
        from pyarrow.fs import FileSelector

        return not self._filesystem().get_file_info(FileSelector(self._path, allow_not_found=True))

    def remove(self, rel: str) -> None:
        self._filesystem().delete_file(f"{self._path}/{rel}")

    def remove_all(self) -> None:
        self._filesystem().delete_dir_contents(self._path, missing_dir_ok=True)

    def copy_in(self, source: Path, rel: str) -> None:
        """Write local file `source` as `rel` in this folder, streamed a block at a time."""
        with self._filesystem().open_output_stream(f"{self._path}/{rel}") as out, open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                out.write(block)
