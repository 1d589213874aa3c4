"""MLflow artifact URIs (`runs:/`, `models:/`, any artifact store) as local folders, for `corrhash.load`.

Serving reads model folders and imports no MLflow; this is the one place that fetches them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

import mlflow
from mlflow.exceptions import MlflowException

from corrhash.errors import DataError


def missing_sqlite_store(uri: str) -> bool:
    """A `sqlite:///FILE` URI whose file does not exist (MlflowClient would create an empty store there)."""
    return uri.startswith("sqlite:///") and not Path(unquote(uri[len("sqlite:///"):])).is_file()


def require_tracking_store(uri: str) -> None:
    """Refuse a registry URI when no tracking store is configured: MLflow's default would create an
    empty ./mlflow.db in the cwd, then report the model as not found."""
    if mlflow.tracking.is_tracking_uri_set():
        return
    default = mlflow.get_tracking_uri()  # computing it creates nothing; using it would
    if missing_sqlite_store(default):
        raise DataError(f"{uri}: no MLflow tracking store to resolve it; set MLFLOW_TRACKING_URI "
                        f"(no {default} here)")


def resolve_alias(uri: str) -> dict:
    """The registry version `models:/NAME@ALIAS` names now: {"registered_name", "registered_version", "model_id"}
    (what an index built with the model records of it); a DataError naming the URI if there is none."""
    require_tracking_store(uri)
    name, alias = uri[len("models:/"):].split("@", 1)
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise DataError(f"{uri}: {' '.join(str(exc.message).split())}") from exc
    logged = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")  # MLflow 3 registers a logged model
    return {"registered_name": name, "registered_version": str(version.version),
            "model_id": version.model_id or (logged.group(1) if logged else None)}


def download_artifacts(uri: str) -> Path:
    """An MLflow artifact URI as a local folder; any failure is a DataError naming the URI."""
    if uri.startswith(("runs:/", "models:/")):
        require_tracking_store(uri)
    # A library call is quiet: MLflow's per-file progress bar (one stderr line redrawn for each of a model's ~100
    # files) is off unless the user's environment asks for it (the jobs set the same in log.quiet_dependencies).
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    if quiet:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except (MlflowException, OSError) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise DataError(f"{uri}: {' '.join(str(message).split())}") from exc
    finally:
        if quiet:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
