"""The model registry: every tune's best model becomes a version; `champion` moves only on a better val,
and only against a champion scored on the same data."""

from __future__ import annotations

import json

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
# A challenger must beat the champion by more than this: equal precisions summed in another order
# differ in the last bits (0.8030000000000002 vs 0.803), and a tie must not move the champion.
MARGIN = 1e-9


def registered_name(dataset: str, bits: int) -> str:
    return f"corrhash-{dataset}-{bits}b"


def describe_version(client: MlflowClient, name: str, version: str, results: dict) -> None:
    """Registry entries that explain themselves: what the model is, what it was trained on, how it scored."""
    k = results["eval_k"]
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, f"corrhash semantic hashing models: {results['dataset']} documents to "
                                             f"{results['model']['bits']}-bit codes; `{CHAMPION}` is the best on val.")
    tuned = ", ".join(f"{key} {value}" for key, value in (results["tuned"] or {}).items())
    client.update_model_version(name, version, (
        f"{results['model']['name']} from job {results['job']} ({results['launcher']}); val p@{k} "
        f"{results['val_precision']:.4f}" + (f", test p@{k} {results['test_precision']:.4f}"
                                             if results["test_precision"] is not None else "")
        + (f"; tuned: {tuned}" if tuned else "")))
    tags = {"model": results["model"]["name"], "bits": results["model"]["bits"], "eval_k": k,
            "data.content_hash": results["content_hash"], "job": results["job"],
            "test_precision": results["test_precision"],
            # The full configuration, so a version says exactly what to re-run (the method is `model`).
            "config.model": json.dumps(results["model"], sort_keys=True),
            "config.train": json.dumps(results["train"], sort_keys=True)}
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value))


def promote_if_better(client: MlflowClient, name: str, version: str, val_precision: float,
                      content_hash: str | None = None) -> tuple[bool, str]:
    """Tag the version with its val precision; move `champion` to it only if it beats the current one
    by more than MARGIN, on the same data. The tag holds repr(float): compared float to float, unrounded."""
    client.set_model_version_tag(name, version, "val_precision", repr(float(val_precision)))
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None or champion.tags.get("val_precision") is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, f"{name} v{version} is the new champion: val {val_precision:.4f} (no champion before)"
    data = champion.tags.get("data.content_hash")
    if content_hash and data and data != content_hash:
        return False, (f"{name} v{version} not promoted: the champion v{champion.version} was scored on other data "
                       f"({data[:12]}… vs {content_hash[:12]}…); compare them on one dataset first")
    current = float(champion.tags["val_precision"])
    if val_precision > current + MARGIN:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True, f"{name} v{version} is the new champion: val {val_precision:.4f} > {current:.4f}"
    return False, f"{name} v{version} not promoted: val {val_precision:.4f} does not beat the champion's {current:.4f}"


def decide_champion(client: MlflowClient, parent_id: str, registry: str, results: dict) -> str:
    """Describe the registered version and move `champion` to it if it wins; a rerun of a finished tune
    (its version reused by publish_model) keeps the decision it made (the parent run's tag)."""
    decision = client.get_run(parent_id).data.tags.get("champion.decision")
    if decision is None:
        version = results["registered_version"].rpartition("/")[2]
        describe_version(client, registry, version, results)
        _, decision = promote_if_better(client, registry, version, results["val_precision"], results["content_hash"])
        client.set_tag(parent_id, "champion.decision", decision)
    return decision
