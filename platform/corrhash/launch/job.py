"""The one frame every cluster job opens (Ray Train, Tune, ablations): lock the job's name, connect to Ray, check
that every node sees the job's paths and that its resources fit, then open (or resume) its MLflow job run.

Everything that can fail without a cluster is checked before Ray starts, and everything that needs the cluster
before an MLflow run exists, so a job refused for its input leaves no run behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from corrhash.launch.connect import check_fits, init_ray
from corrhash.launch.preflight import check_job_paths, job_lock
from corrhash.launch.shared_paths import check_shared_paths
from corrhash.tracking.runs import client_for, ensure_experiment, job_run, tracking_uri


@dataclass
class ClusterOptions:
    address: str | None = None
    """Ray cluster to use; default $RAY_ADDRESS (set inside `ray job submit`), else a local Ray."""
    mlflow_uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db."""
    experiment: str = "corrhash"
    """MLflow experiment name."""


@dataclass
class Job:
    """An open job: its name, the MLflow store it records in, and its job run."""

    name: str
    uri: str
    client: object  # an MlflowClient
    experiment_id: str
    run_id: str
    resumed: bool


@contextmanager
def launch_job(cluster: ClusterOptions, name: str, *, storage: str, lock_root: str, params: dict, tags: dict,
               data: dict[str, str], folders: dict[str, str] | None = None,
               fits: Callable[[], Iterable[tuple[str, float, float]]] = tuple,
               storage_option: str = "--storage") -> Iterator[Job]:
    """Open job `name`: its lock under `lock_root`, Ray, the node checks of `data` and `folders` ({option: path}),
    the `fits()` checks ((option text, cpus, gpus), asked once Ray is up), then its MLflow job run; the run ends
    FINISHED, or FAILED/KILLED when the body raises."""
    check_job_paths(cluster.mlflow_uri, storage, option=storage_option)
    with job_lock(lock_root, name):
        init_ray(cluster.address)
        check_shared_paths(data=data, folders=folders)
        for option, cpus, gpus in fits():
            check_fits(option, cpus, gpus)
        uri = tracking_uri(cluster.mlflow_uri)
        client = client_for(uri)
        experiment_id = ensure_experiment(client, cluster.experiment)
        with job_run(client, experiment_id, name, params, tags) as (run_id, resumed):
            yield Job(name, uri, client, experiment_id, run_id, resumed)
