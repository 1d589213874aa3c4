"""Checks a training or tuning job makes before any work: its output folder, its name, its paths.

Each failure is a named `ConfigError` raised before Ray starts or a run is created, so a
bad option costs milliseconds and leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from corrhash.atomic import sibling_temp_dir
from corrhash.data.files import display, is_uri, secrets_in
from corrhash.errors import ConfigError

RUN_FILES = {"metrics.jsonl", "results.json", "model"}  # what a train run writes into --out
COLLAPSED_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/(?!/)")  # s3://b/x after Path(): s3:/b/x
JOB_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
LOCK_FILE = "corrhash-job.lock"
URI_LOCKS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corrhash" / "job-locks"
"""Where jobs on URI storage lock their names: on the driver's machine (the head, for every `ray job submit`)."""


def new_run_dir(out: str | Path) -> Path:
    """A temporary sibling of `out` to write a run into; `out` is untouched until `atomic.replace_dir`.

    An existing `out` must be a folder that is empty or holds only a previous run's files: a rerun
    replaces that run when it succeeds and leaves it whole when it fails."""
    out = check_out_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return sibling_temp_dir(out)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write beside it ({exc})") from exc


def check_local_folder(path: str | Path, option: str) -> None:
    """A URI given to an option that takes a local folder arrives as a path with its // collapsed: say so,
    instead of creating ./s3:/bucket/... on the driver."""
    if COLLAPSED_URI.match(str(path)) or "://" in str(path):
        raise ConfigError(f"{option} {path}: a URI, but {option} is a folder on the machine that runs the job "
                          "(the driver); results are also logged to MLflow, whose artifact store may be object "
                          "storage; pass a local folder")


def check_out_dir(out: str | Path) -> Path:
    check_local_folder(out, "--out")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
        if foreign:
            raise ConfigError(f"--out {out}: holds {foreign[:5]}, which are not a train run's files; "
                              "choose a new or empty folder")
    return out


def check_job_name(name: str, option: str = "--name") -> str:
    """A job name becomes a folder under --storage and a value in MLflow searches: keep it plain."""
    if not JOB_NAME.fullmatch(name):
        raise ConfigError(f"{option} {name!r}: use 1-128 of A-Z a-z 0-9 . _ - and no leading dot")
    return name


def ray_job_id() -> str | None:
    """The submission id when this process is a `ray job submit` entrypoint, else None."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw is None:
        return os.environ.get("RAY_JOB_ID")
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id") or "(unknown id)"
    except (json.JSONDecodeError, AttributeError):
        return "(unknown id)"


def check_job_paths(mlflow_uri: str | None, storage: str, option: str = "--storage") -> None:
    """Inside a Ray job the working dir is Ray's temporary copy of the checkout, and the submitter's
    environment is not passed on: a default MLflow DB or a relative --storage would vanish with it.
    A `storage` with a collapsed URI (s3:/b/x) came through a local-folder option (ablate's --out)."""
    if COLLAPSED_URI.match(storage):
        check_local_folder(storage, option)
    if secrets_in(storage):
        raise ConfigError(f"{option} {display(storage)}: holds credentials ({', '.join(secrets_in(storage))}), which "
                          "would be logged with it; pass them in the environment of the driver and the workers")
    job = ray_job_id()
    if job is None:
        return
    if not mlflow_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(f"Ray job {job}: no --mlflow-uri and no MLFLOW_TRACKING_URI; runs would go to a sqlite file "
                          "in Ray's temporary copy of the working dir. Submit with "
                          "--runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"http://HOST:5000\"}}' "
                          "or pass --mlflow-uri")
    if "://" not in storage and not Path(storage).is_absolute():
        raise ConfigError(f"Ray job {job}: {option} {storage!r} is relative, so its files would go into Ray's "
                          f"temporary copy of the working dir; pass an absolute {option} (or a URI)")


@contextmanager
def job_lock(storage: str, name: str):
    """Hold `storage/NAME/corrhash-job.lock` exclusively while the job runs: a second live job with the
    same name is refused. The OS drops the lock when its process dies, so a stale lock (its PID gone)
    is simply taken over. Object storage has no such lock: a URI's lock is a local file under URI_LOCKS,
    which covers every job whose driver runs on this machine (all jobs submitted to one cluster's head)."""
    if is_uri(storage):
        folder = URI_LOCKS / hashlib.sha256(display(storage).encode()).hexdigest()[:16] / name
    else:
        folder = Path(storage) / name
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"--name {name}: a job with this name is running ({holder}; lock {folder / LOCK_FILE}); "
                              "wait for it or choose another --name") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
