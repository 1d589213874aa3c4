"""Model registry (timm style): @register("name") on a HashModel subclass, then
create_model(config, n_features) builds the class named by config.name."""

from __future__ import annotations

from typing import Callable, TypeVar

from corrhash.errors import ConfigError

_REGISTRY: dict[str, type] = {}
_T = TypeVar("_T", bound=type)


def register(name: str) -> Callable[[_T], _T]:
    def add(cls: _T) -> _T:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type:
    """The registered class (its `search_space`, `also_searchable`, `trainable`); a named error if unknown."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def searchable(name: str) -> frozenset[str]:
    """Every config field a search may vary for model `name`: its default space's and `also_searchable`."""
    cls = model_class(name)
    return frozenset(cls.search_space) | frozenset(cls.also_searchable)


def create_model(config: "ModelConfig", n_features: int) -> "HashModel":
    return model_class(config.name)(config, n_features)


# Imported after register() exists, since each module registers itself on import.
from corrhash.models.base import HashModel, SparseLinear  # noqa: E402
from corrhash.models.config import ModelConfig  # noqa: E402
from corrhash.models import bmsh, corrsh, lsh, nash, snuh, sph, srbm, sth, vdsh  # noqa: E402,F401

__all__ = ["HashModel", "ModelConfig", "SparseLinear", "create_model", "list_models", "model_class", "register",
           "searchable"]
