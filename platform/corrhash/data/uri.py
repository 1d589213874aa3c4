"""Where prepared data or a job's output lives: a local path, or a URI that pyarrow.fs opens.

`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://host/path` and `file:///path` go through
`pyarrow.fs.FileSystem.from_uri`, so credentials and endpoints come from the usual environment
(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...) or from the URI's query
(`?endpoint_override=host:port&scheme=http`). A URI is logged (MLflow params and tags, Ray's state), so
one holding credentials (`access_key=`, `secret_key=`, `session_token=`) is refused; messages still show a
URI through `display`, without its query.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs

SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
SECRET_PARAMETERS = {"access_key", "secret_key", "session_token"}  # pyarrow's S3 URI options that are secrets


def is_uri(location: str | Path) -> bool:
    return isinstance(location, str) and SCHEME.match(location) is not None


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
    """The location without a URI's query (which may carry credentials)."""
    return str(location).partition("?")[0] if is_uri(location) else str(location)


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
