"""Where a run's code came from, resolved in the driver: git commit, branch, dirty state, source, user.

`mlflow.start_run`'s context providers find the git commit from the entry point's checkout. A job submitted
with `ray job submit --working-dir .` runs in Ray's copy of the folder, without `.git` (Ray leaves it out of
the package), so the commit then comes from `CORRHASH_GIT_COMMIT` in the job's runtime env (`SHA` or
`SHA-dirty`, what `git describe --always --dirty --abbrev=40 --exclude='*'` prints; the submit line
`cluster/local.sh` prints fills it in), and the package Ray uploaded, a content hash of the working dir, is
recorded as well. Every run a job creates (its own, Tune trials, ablation cells)
carries these tags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

from mlflow.tracking.context.registry import resolve_tags

COMMIT_TAG = "mlflow.source.git.commit"
DIRTY_TAG = "corrhash.source.git.dirty"  # MLflow has no tag for uncommitted changes
PACKAGE_TAG = "corrhash.source.package"  # the gcs://_ray_pkg_<content hash>.zip a submitted job runs from
COMMIT_ENV = "CORRHASH_GIT_COMMIT"


def _git_dirty(folder: Path) -> str | None:
    """"true"/"false": whether tracked files differ from the commit; None where git cannot say."""
    try:
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return None if status.returncode else str(bool(status.stdout.strip())).lower()


def _ray_package() -> str | None:
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except ValueError:
        return None
    working_dir = (job.get("runtime_env") or {}).get("working_dir")
    return working_dir if isinstance(working_dir, str) else None


def source_tags() -> dict[str, str]:
    """The tags `mlflow.start_run` would add (source name and type, user, git commit, branch and repository
    when the entry point is in a checkout), with the commit from the environment where no checkout is, the
    dirty state, and a submitted job's Ray package. Resolved once per process (a tune creates a run per trial),
    as the job started."""
    return dict(_resolved())


@cache
def _resolved() -> dict[str, str]:
    tags = resolve_tags({})
    if tags.get(COMMIT_TAG):
        dirty = _git_dirty(Path(sys.argv[0]).absolute().parent)
    else:
        commit, dirty = os.environ.get(COMMIT_ENV, "").strip(), None
        if commit:
            commit, dirty = commit.removesuffix("-dirty"), str(commit.endswith("-dirty")).lower()
            tags[COMMIT_TAG] = commit
    tags[DIRTY_TAG] = dirty if dirty in ("true", "false") else "unknown"
    package = _ray_package()
    if package:
        tags[PACKAGE_TAG] = package
    return tags
