"""`prepare_data.py text --ray`: the preparation of a table corpus (many files) spread over a Ray cluster, giving
exactly what `corrhash.data.prepare` gives in one process: the same vocab.json, the same shard files (same rows,
order and boundaries), the same manifest and content hash.

The work is `prepare.build_in_passes` (its four passes are written there, once); this module only supplies the
`map` that runs each pass's jobs, one Ray task a job.

On a cluster of several nodes, the output's parent folder, and input files given as local paths, must be on a
file system that every node sees at the same path (the tasks write into the one and read the other); inputs
given as URIs (s3://, gs://) are read from wherever a task runs.
"""

from __future__ import annotations

import functools
from typing import Callable

from corrhash.data.prepare import PrepareConfig, build_in_passes, run_prepare
from corrhash.errors import ConfigError


def prepare_on_ray(config: PrepareConfig, address: str | None = None) -> dict:
    """Prepare `config` (dataset `text`) on the Ray cluster at `address` (None: $RAY_ADDRESS or a local Ray)."""
    if config.dataset != "text":
        raise ConfigError(f"--ray prepares text tables; {config.dataset} is prepared in one process (drop --ray)")
    from corrhash.launch.connect import init_ray

    init_ray(address)
    return run_prepare(config, functools.partial(build_in_passes, map=ray_map, executor="ray"))


def ray_map(function: Callable[[dict], dict], jobs: list[dict]) -> list[dict]:
    """`map(function, jobs)` with one Ray task a job, all at once; results in job order."""
    import ray

    task = ray.remote(_call)
    return ray.get([task.remote(function, job) for job in jobs])


def _call(function: Callable[[dict], dict], job: dict) -> dict:
    """The task: `function` (a partial, which `ray.remote` does not take itself) on one job."""
    return function(job)
