"""Wall-clock timing that waits for queued GPU work, so a measurement covers what it started."""

from __future__ import annotations

import time

import torch


def synchronize() -> None:
    # The torch search path picks CUDA whenever it exists, whatever --device says: wait for any of it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn):
    """(seconds, fn()) with the GPU drained before and after."""
    synchronize()
    start = time.perf_counter()
    value = fn()
    synchronize()
    return time.perf_counter() - start, value
