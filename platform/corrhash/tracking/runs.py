"""MLflow runs for corrhash jobs: where tracking goes, one run per job name, the logged model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

import corrhash
from corrhash.artifact import MLFLOW_ARTIFACT_KEY
from corrhash.errors import ConfigError

JOB_TAG = "corrhash.job"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(corrhash.__file__).parent


def tracking_uri(explicit: str | None = None) -> str:
    """--mlflow-uri, else $MLFLOW_TRACKING_URI, else the embedded default: ./mlflow.db (SQLite)."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').absolute()}"


def filter_value(value: str) -> str:
    """`value` as a string literal for an MLflow filter string. MLflow's parser has no escape
    character, so the literal is quoted with whichever quote the value does not contain."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"{value!r}: a name used in MLflow searches cannot contain both ' and \"")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):  # keep artifacts beside the DB, not in the cwd of a worker
        location = (Path(client.tracking_uri[len("sqlite:///"):]).parent / "mlruns").absolute().as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def start_or_resume_run(client: MlflowClient, experiment_id: str, job_name: str, params: dict,
                        tags: dict) -> tuple[str, bool]:
    """The run tagged with this job name (resumed), or a new one; returns (run_id, resumed)."""
    existing = client.search_runs([experiment_id], filter_string=f"tags.`{JOB_TAG}` = {filter_value(job_name)}",
                                  max_results=1, order_by=["attributes.start_time DESC"])
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(experiment_id, run_name=job_name, tags={JOB_TAG: job_name, **tags})
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])
    return run.info.run_id, False


def log_metrics(client: MlflowClient, run_id: str, metrics: dict, step: int) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k.replace("@", "_at_"), float(v), now, step)
                                      for k, v in metrics.items() if isinstance(v, (int, float))])


def log_hashing_model(uri: str, run_id: str, model_dir: Path, example_texts: list[str],
                      registered_name: str | None = None) -> ModelInfo:
    """Log a corrhash model folder as a pyfunc "model from code" (nothing pickled) to the run.

    The run stays RUNNING: the caller ends it once the model is registered and the champion decided,
    so a job stopped in between is not recorded as FINISHED. The returned ModelInfo carries the
    registry version this call created (`registered_model_version`)."""
    mlflow.set_tracking_uri(uri)
    requirements = [f"mlflow=={mlflow.__version__}", "torch", "numpy", "scipy", "scikit-learn", "safetensors",
                    "faiss-cpu", "pyarrow"]
    # Not `with mlflow.start_run(...)`: leaving that block ends the run as FINISHED.
    mlflow.start_run(run_id=run_id)
    try:
        return mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_FILE),
                                       artifacts={MLFLOW_ARTIFACT_KEY: str(model_dir)},
                                       code_paths=[str(PACKAGE_DIR)], input_example=example_texts,
                                       pip_requirements=requirements, registered_model_name=registered_name)
    finally:
        mlflow.end_run(status="RUNNING")
