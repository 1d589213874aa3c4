"""Raw corpora → Parquet TF-IDF shards, and the reader every later stage uses."""

from corrhash.data.featurize import TfidfFeaturizer, TfidfRecipe
from corrhash.data.prepare import DATASETS, PrepareConfig, prepare
from corrhash.data.shards import SCHEMA, Split, TfidfShards

__all__ = ["DATASETS", "PrepareConfig", "SCHEMA", "Split", "TfidfFeaturizer", "TfidfRecipe", "TfidfShards",
           "prepare"]
