"""Where a run's code came from (tracking/lineage.py) and how a job names a cluster it cannot reach
(launch/connect.py), without a cluster: the connected paths run in tests/test_security.py on a real head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corrhash.errors import ConfigError
from corrhash.launch.connect import _reachable, gcs_address, init_ray
from services import free_port

REPO = Path(__file__).resolve().parents[1]
SHOW_TAGS = f"""
import json, sys
sys.path.insert(0, {str(REPO / "platform")!r})
from corrhash.tracking.lineage import source_tags
print(json.dumps(source_tags()))
"""


def tags_of(folder: Path, **env) -> dict:
    """source_tags() as a job whose entry point is a script in `folder` sees them."""
    script = folder / "job.py"
    script.write_text(SHOW_TAGS)
    shown = subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert shown.returncode == 0, shown.stderr[-3000:]
    return json.loads(shown.stdout.splitlines()[-1])


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_a_checkout_gives_its_commit_and_whether_tracked_files_changed(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "tracked.txt").write_text("one\n")
    git(tmp_path, "add", "tracked.txt")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    clean = tags_of(tmp_path, CORRHASH_GIT_COMMIT="f" * 40)  # a checkout wins over the environment
    assert clean["mlflow.source.git.commit"] == head and clean["corrhash.source.git.dirty"] == "false"
    assert "corrhash.source.package" not in clean
    (tmp_path / "tracked.txt").write_text("two\n")
    assert tags_of(tmp_path)["corrhash.source.git.dirty"] == "true"


def test_without_a_checkout_the_submitted_commit_and_ray_package_are_recorded(tmp_path):
    job_config = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"}})
    tags = tags_of(tmp_path, CORRHASH_GIT_COMMIT="a" * 40 + "-dirty", RAY_JOB_CONFIG_JSON_ENV_VAR=job_config)
    assert tags["mlflow.source.git.commit"] == "a" * 40 and tags["corrhash.source.git.dirty"] == "true"
    assert tags["corrhash.source.package"] == "gcs://_ray_pkg_0123abcd.zip"
    unknown = tags_of(tmp_path, CORRHASH_GIT_COMMIT="")  # `git describe` outside a checkout printed nothing
    assert "mlflow.source.git.commit" not in unknown and unknown["corrhash.source.git.dirty"] == "unknown"


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:port", "ray://:10001"])
def test_an_address_that_is_no_address_is_named(address):
    with pytest.raises(ConfigError, match=r"--address .*is not a Ray address"):
        _reachable(address, f"--address {address}")


def test_a_cluster_nothing_answers_for_is_named_at_once_in_either_form():
    nowhere = f"127.0.0.1:{free_port()}"
    assert gcs_address(nowhere, "x") == nowhere and gcs_address(f"ray://{nowhere}", "x") == f"ray://{nowhere}"
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"--address {nowhere}: cannot reach a Ray cluster at {nowhere}"):
        init_ray(nowhere)
    with pytest.raises(ConfigError, match=rf"RAY_ADDRESS=http://{nowhere}: no Ray dashboard answers at"):
        os.environ["RAY_ADDRESS"] = f"http://{nowhere}"
        try:
            init_ray(None)
        finally:
            del os.environ["RAY_ADDRESS"]
    assert time.monotonic() - start < 10  # refused connections: no wait for the timeout, no retry loop
