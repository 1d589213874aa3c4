"""A search's blocks as Ray tasks: the `run_blocks` that models/graph.py takes, spread over the cluster.

What every block reads (the corpus's rows, its pruned index) is put in Ray's object store once; numpy arrays come
back from it without a copy on each node, so a task receives only its rows' ids. One task per block, one CPU each,
placed wherever the cluster has a free CPU; results come back in block order, a line says how far it got, and a
last line how many blocks each node searched.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from corrhash.log import log

PROGRESS_EVERY_S = 10.0


def ray_blocks(function: Callable[[dict, dict], tuple], shared: dict, jobs: list) -> list:
    """[function(shared, job) for job in jobs], one Ray task a job (Ray must be initialised)."""
    import ray

    if not jobs:
        return []
    shared_ref = ray.put(shared)
    task = ray.remote(num_cpus=1)(_call)
    refs = [task.remote(function, shared_ref, job) for job in jobs]
    started = last = time.monotonic()
    pending, done = list(refs), 0
    while pending:
        finished, pending = ray.wait(pending, num_returns=len(pending), timeout=PROGRESS_EVERY_S)
        done += len(finished)
        if pending and time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            log(f"{done}/{len(refs)} blocks searched on Ray ({last - started:.0f} s)")
    results = ray.get(refs)
    nodes = Counter(node for _, node in results)
    log(f"{len(refs)} blocks searched on Ray in {time.monotonic() - started:.1f} s, on {len(nodes)} node(s): "
        + ", ".join(f"{node[:8]} {count}" for node, count in nodes.most_common()))
    return [result for result, _ in results]


def _call(function: Callable[[dict, dict], tuple], shared: dict, job: dict) -> tuple:
    import ray

    return function(shared, job), ray.get_runtime_context().get_node_id()
