"""Raw corpora → Parquet TF-IDF shards, and the reader every later stage uses.

The reader's names are re-exported here and imported on first use, so that importing one module of the package
(serving imports `featurize` and `device_csr`) loads only that module. Preparation is imported from its own module:
`from corrhash.data.prepare import PrepareConfig, prepare`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corrhash.data.featurize import TfidfFeaturizer, TfidfRecipe
    from corrhash.data.shards import SCHEMA, Split, TfidfShards

__all__ = ["SCHEMA", "Split", "TfidfFeaturizer", "TfidfRecipe", "TfidfShards"]


def __getattr__(name: str):
    if name in ("SCHEMA", "Split", "TfidfShards"):
        from corrhash.data import shards as module
    elif name in ("TfidfFeaturizer", "TfidfRecipe"):
        from corrhash.data import featurize as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
