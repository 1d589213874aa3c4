"""What a configuration of an ablation is (every setting of a cell but its seed), its order in tables and its
short label: shared by the statistics, the markdown and the figures so that all three agree."""

from __future__ import annotations

from typing import Sequence

from corrhash.paper import METHOD_ORDER


def datasets_of(entries) -> list[str]:
    """The dataset labels of rows or summary entries, in first-seen order."""
    return list(dict.fromkeys(e["dataset"] for e in entries))


def config_keys(axis_names: Sequence[str]) -> list[str]:
    """The keys that make a configuration; the seed is left out because seeds are the replicates."""
    return ["dataset", "method", "bits", *axis_names]


def config_of(row: dict, keys: Sequence[str]) -> tuple:
    return tuple(row[key] for key in keys)


def value_key(value) -> tuple:
    """A sort key for axis values of any JSON type: None, then numbers (bools as 0/1), then strings."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (bool, int, float)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def method_key(method: str) -> tuple:
    """The paper's row order (corrhash.paper.METHOD_ORDER), other methods after it alphabetically."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def sort_configs(configs, keys: Sequence[str], datasets: Sequence[str]) -> list[tuple]:
    """Configurations in report order: datasets as given (first appearance), methods in paper order, bits
    ascending, then each extra axis by value."""
    def key(config: tuple) -> tuple:
        dataset, method, bits, *axes = config
        return (datasets.index(dataset), method_key(method), bits, *(value_key(v) for v in axes))
    return sorted(configs, key=key)


def label(config: dict, skip: Sequence[str] = ()) -> str:
    """A short human label like "reuters corrsh 64b rank=5 mixture=10", leaving out the keys in `skip`."""
    parts = []
    for key, value in config.items():
        if key in skip:
            continue
        if key in ("dataset", "method"):
            parts.append(str(value))
        elif key == "bits":
            parts.append(f"{value}b")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)
