"""Writes that are all or nothing: build beside the target, then rename into place.

A reader sees the old file or folder or the complete new one, never half of one. Temporaries are
hidden siblings named after the target and this process (`.NAME.tmp-PID-*`, `.NAME.old-PID`): on the
same file system as the target, so the final `os.replace` is one rename, and recognisable, so that
what a killed process left behind can be removed later (`remove_stale_siblings`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from corrhash.log import log


def sibling_temp_dir(target: Path) -> Path:
    """A new empty hidden folder beside `target` (whose parent must exist); a killed run's are removed first."""
    remove_stale_siblings(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))


def replace_dir(tmp: Path, target: str | Path) -> None:
    """Move the finished folder `tmp` to `target`. An old `target` is moved aside first and deleted only
    once the new one is in place; if the rename fails it is put back."""
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)  # what is left is removed by the next remove_stale_siblings


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on a clean exit it replaces `target`, on any error it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_temp_dir(target)
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary sibling of `path`, renamed over `path` on a clean exit; an
    exception (e.g. a failed checksum) leaves `path` as it was and deletes the temporary file."""
    path = Path(path)
    remove_stale_siblings(path)  # a killed save's temporary file
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    # os.open with mode 0o666 (not mkstemp's 0o600): the file gets the permissions a plain open() gives.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def remove_stale_siblings(target: Path) -> None:
    """Delete the temporaries beside `target` left by processes that no longer exist (SIGKILL, power loss)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)(?:-.*)?")
    for path in target.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
            continue  # that process is still alive (or belongs to someone we may not signal)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        log(f"removing {path}, left by an interrupted run (process {pid})")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
