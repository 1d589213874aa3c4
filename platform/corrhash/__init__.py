"""corrhash: correlated semantic hashing (CorrSH) training, tuning and search."""

from corrhash.package import __version__

__all__ = ["__version__", "load"]


def load(uri, device: str = "cpu"):
    """A trained model for hashing and search: `corrhash.load("models:/corrhash-20ng-64b@champion")`.

    A folder is read directly; an MLflow URI is downloaded through tracking (imported only then: MLflow is slow
    to import, and serving itself imports none of it)."""
    from corrhash.serve.hashing import load as load_hashing_model

    return load_hashing_model(uri, device, download=_download_mlflow_artifacts, resolve_alias=_resolve_mlflow_alias)


def _download_mlflow_artifacts(uri: str):
    from corrhash.tracking.download import download_artifacts

    return download_artifacts(uri)


def _resolve_mlflow_alias(uri: str) -> dict:
    from corrhash.tracking.download import resolve_alias

    return resolve_alias(uri)
