"""Multi-node-safe paths: a local path a job hands to its workers must be the same folder on every node.

On one machine a path is a path. On a cluster, Ray Train workers, Tune trials and ablation cells read the
prepared data, and workers and trials write checkpoints under --storage, on whichever node they run:
a folder that exists only on the driver's node fails there, late and with a confusing error (or, for a
stale copy, silently trains on other data). So when the cluster has more than one alive node, every
local path (plain or file://) is checked on every node by a tiny task pinned to it (num_cpus=0): a data
folder must hold a manifest with the driver's content hash, an output folder must show a marker file the
driver has just written into it. URIs (s3://, gs://, hdfs://) are shared by construction and not checked;
on one node (an embedded local Ray included) nothing is checked and nothing is started. A node that leaves
the cluster during the check (Ray lists a lost node alive until its heartbeats time out) runs nothing of the
job and is skipped, with a line on stderr.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from corrhash.data.files import local_path
from corrhash.errors import ConfigError, CorrhashError

MARKER_PREFIX = ".corrhash-visible-"
ANSWER_TIMEOUT_S = 120.0  # a node starts a worker process (and fetches the package) for its probe
ADVICE = ("use a URI (s3://BUCKET/PREFIX, gs://...) or a folder on a filesystem every node mounts at the same "
          "path (NFS, EFS, Filestore, a shared volume)")


def content_hash(folder: str) -> str | None:
    """The content hash a prepared folder's manifest.json states; None when it has no readable manifest."""
    try:
        manifest = json.loads(Path(folder, "manifest.json").read_text())
        return manifest.get("content_hash") if isinstance(manifest, dict) else None
    except (OSError, ValueError):
        return None


def look(probes: list[tuple[str, str, str]]) -> list[str | None]:
    """On one node: for each (kind, path, expected) what is wrong there, or None. A data folder must state the
    expected content hash; an output folder must hold the marker file `expected` names, with its token."""
    problems = []
    for kind, path, expected in probes:
        if kind == "data":
            found = content_hash(path)
            problems.append(None if found == expected else
                            "no prepared data there (no readable manifest.json)" if found is None else
                            f"another dataset there (content hash {found[:12]}…, the driver's is {expected[:12]}…)")
        else:
            marker, token = expected.split("\n")
            try:
                seen = Path(path, marker).read_text() == token
            except OSError:
                seen = False
            problems.append(None if seen else "a file the driver has just written into it is not there, "
                                              "so it is not the same folder")
    return problems


def check_shared_paths(data: dict[str, str] | None = None, folders: dict[str, str] | None = None) -> None:
    """Refuse (ConfigError) a local path some alive node of the connected Ray cluster cannot see.

    `data`: {option: prepared folder}, `folders`: {option: output folder the workers write into}; the driver
    has already opened the data (it checks its own copy). Call after `init_ray`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    probes, options, markers = [], [], []
    try:
        for option, location in (data or {}).items():
            path = local_path(location)
            if path is not None:
                probes.append(("data", path, content_hash(path) or ""))
                options.append((option, path, "reads this data"))
        for option, location in (folders or {}).items():
            path = local_path(location)
            if path is not None:
                marker, token = f"{MARKER_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
                try:
                    os.makedirs(path, exist_ok=True)
                    Path(path, marker).write_text(token)
                except OSError as exc:
                    raise ConfigError(f"{option} {path}: cannot write into it ({exc})") from exc
                markers.append(Path(path, marker))
                probes.append(("folder", path, f"{marker}\n{token}"))
                options.append((option, path, "writes into this folder"))
        if not probes:
            return
        remote = ray.remote(look)
        asked = {remote.options(num_cpus=0, max_retries=0, name="corrhash path check",
                                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                 .remote(probes): node for node in nodes}
        ready, late = ray.wait(list(asked), num_returns=len(asked), timeout=ANSWER_TIMEOUT_S)
        answers, gone = {}, []
        for ref in ready:
            try:
                answers[ref] = ray.get(ref)
            except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
                gone.append(ref)  # listed alive a moment ago, gone now: Ray marks a lost node dead only later
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        if stuck := [ref for ref in late if asked[ref]["NodeID"] in alive]:
            where = ", ".join(_node_name(asked[ref]) for ref in stuck)
            raise CorrhashError(f"checking {', '.join(o for o, _, _ in options)} on every node: node(s) {where} did "
                                f"not answer within {ANSWER_TIMEOUT_S:g} s")
        for ref in gone + late:  # a node that has left runs nothing of this job: nothing to check there
            print(f"path check: Ray node {_node_name(asked[ref])} left the cluster during the check; not checked",
                  file=sys.stderr, flush=True)
        for ref, problems in answers.items():
            for (option, path, use), problem in zip(options, problems):
                if problem is not None:
                    raise ConfigError(f"{option} {path}: not visible on Ray node {_node_name(asked[ref])}: "
                                      f"{problem}. The cluster has {len(nodes)} nodes and a job on any of them "
                                      f"{use}; {ADVICE}")
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (id {node['NodeID'][:12]})"
