"""Progress output for long work, through stdlib logging: the `corrhash` logger, one line per step on stderr,
stamped with the seconds since the process started.

The handler is attached when this module is first imported, in a job and equally in a Ray worker or task (which
prints to the job's console through Ray), at the level `$CORRHASH_LOG_LEVEL` names (INFO unless set). A job's
`--quiet`/`--verbose` call `set_level`, which also sets that variable so the Ray workers the job starts inherit it
(`launch/connect.py` passes it in their runtime env). Other libraries' loggers are left to them, apart from the
noise jobs turn off in `quiet_dependencies`.
"""

from __future__ import annotations

import logging
import os
import sys

LEVEL_ENV = "CORRHASH_LOG_LEVEL"
logger = logging.getLogger("corrhash")


class _Elapsed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"[corrhash {record.relativeCreated / 1000:7.1f}s] {prefix}{record.getMessage()}"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not the one at import: Ray's workers and
    pytest's capture replace it after this module is loaded."""

    def __init__(self):
        super().__init__()
        self.setFormatter(_Elapsed())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


if not logger.handlers:
    logger.addHandler(_CurrentStderr())
    logger.propagate = False  # one line per record, whatever the root logger (Ray's, MLflow's) does
    logger.setLevel(os.environ.get(LEVEL_ENV, "INFO").upper())


def set_level(level: int | str) -> None:
    """The level of corrhash's own output, here and in the Ray workers started after this call."""
    logger.setLevel(level)
    os.environ[LEVEL_ENV] = logging.getLevelName(logger.level)


# What a job turns off in the libraries it drives, here and (launch/connect.py) in its Ray workers: MLflow's
# per-file download bar, redrawn as one stderr line per file of a model.
QUIET_DEPENDENCIES = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def quiet_dependencies() -> None:
    """Set QUIET_DEPENDENCIES (before the libraries read them), unless the user's environment says otherwise."""
    for name, value in QUIET_DEPENDENCIES.items():
        os.environ.setdefault(name, value)


def log(message: str) -> None:
    logger.info(message)


def debug(message: str) -> None:
    logger.debug(message)


def warn(message: str) -> None:
    logger.warning(message)
