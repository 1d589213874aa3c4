"""Per-epoch selection on a seeded sample of val queries (`eval_queries`): the sample is seeded and keeps split
order, and the chosen model's reported val precision is still over the whole val split."""

from __future__ import annotations

import numpy as np
import pytest

from corrhash.data import TfidfShards
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig
from corrhash.retrieval import precision_at_k
from corrhash.runs.local import run_local
from corrhash.runs.spec import RunSpec
from corrhash.serve.hashing import HashingModel
from corrhash.train import TrainConfig
from corrhash.train.loop import selection_queries


def test_a_sample_is_seeded_ordered_and_never_larger_than_the_split(shards_synthetic):
    val = TfidfShards(shards_synthetic).split("val")
    sample = val.sample(16, seed=3)
    assert len(sample) == 16 and np.all(np.diff(sample.doc_ids) > 0)
    assert set(sample.doc_ids) <= set(val.doc_ids)
    again = val.sample(16, seed=3)
    assert np.array_equal(sample.doc_ids, again.doc_ids)
    assert (sample.features != again.features).nnz == 0
    rows = np.searchsorted(val.doc_ids, sample.doc_ids)
    assert (sample.features != val.features[rows]).nnz == 0 and np.array_equal(sample.labels, val.labels[rows])
    assert not np.array_equal(val.sample(16, seed=4).doc_ids, sample.doc_ids)
    assert val.sample(len(val) + 5, seed=0) is val
    assert selection_queries(val, TrainConfig(eval_queries=0)) is val
    assert len(selection_queries(val, TrainConfig(eval_queries=10))) == 10


def test_eval_queries_must_not_be_negative():
    with pytest.raises(ConfigError, match="eval_queries=-1"):
        TrainConfig(eval_queries=-1)


def test_the_reported_val_precision_is_over_the_whole_split(shards_synthetic, tmp_path):
    spec = RunSpec(str(shards_synthetic), ModelConfig(name="nash", bits=16, hidden=32),
                   TrainConfig(epochs=3, eval_k=20, eval_queries=12, device="cpu"))
    results = run_local(spec, tmp_path / "run")
    shards = TfidfShards(shards_synthetic)
    train, val = shards.split("train"), shards.split("val")
    model = HashingModel(tmp_path / "run" / "model")
    whole = precision_at_k(model.encode_features(val.features), val.labels, model.encode_features(train.features),
                           train.labels, k=20).tie_aware
    assert results["val_precision"] == pytest.approx(whole, abs=1e-9)
    assert results["train"]["eval_queries"] == 12
