"""The model registry: every tune's best model becomes a version; `champion` moves only on a better val."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
# A challenger must beat the champion by more than this: equal precisions summed in another order
# differ in the last bits (0.8030000000000002 vs 0.803), and a tie must not move the champion.
MARGIN = 1e-9


def registered_name(dataset: str, bits: int) -> str:
    return f"corrhash-{dataset}-{bits}b"


def champion_val_precision(client: MlflowClient, name: str) -> float | None:
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = version.tags.get("val_precision")
    return float(value) if value is not None else None


def promote_if_better(client: MlflowClient, name: str, version: str, val_precision: float) -> tuple[bool, str]:
    """Tag the version with its val precision; move `champion` to it only if it beats the current one
    by more than MARGIN. The tag holds repr(float), so the comparison is float to float, unrounded."""
    client.set_model_version_tag(name, version, "val_precision", repr(float(val_precision)))
    current = champion_val_precision(client, name)
    if current is None or val_precision > current + MARGIN:
        client.set_registered_model_alias(name, CHAMPION, version)
        reason = (f"{name} v{version} is the new champion: val p@100 {val_precision:.4f}"
                  + (f" > {current:.4f}" if current is not None else " (no champion before)"))
        return True, reason
    return False, f"{name} v{version} not promoted: val p@100 {val_precision:.4f} does not beat the champion's {current:.4f}"
