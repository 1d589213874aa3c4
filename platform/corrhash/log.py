"""Progress output for long work: one timestamped line per step, on stderr."""

import sys
import time

_START = time.monotonic()


def log(message: str) -> None:
    elapsed = time.monotonic() - _START
    print(f"[corrhash {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)
