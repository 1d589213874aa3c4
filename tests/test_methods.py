"""Every registered method through the one run lifecycle, on the synthetic corpus (any clone), and a quality floor
on real 20 Newsgroups (raw corpora needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import corrhash
from corrhash.artifact import save_model
from corrhash.data import TfidfShards
from corrhash.data.device_csr import place
from corrhash.models import ModelConfig, list_models
from corrhash.retrieval import pack_codes
from corrhash.runs.spec import job_configs
from corrhash.train.config import TrainConfig
from corrhash.train.loop import fit

from badinput import job

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

TEXTS = ["t0w1 t0w2 t0w3 common1 t0w4", "t5w7 t5w8 common2 t5w9 t5w1", "", "no known words at all"]
SMALL = dict(bits=16, hidden=32, rank=4, mixture=4, components=4, neighbours=5)


@pytest.mark.parametrize("name", list_models())
def test_every_model_fits_saves_reloads_and_encodes_text(name, shards_synthetic, tmp_path, capsys):
    shards = TfidfShards(shards_synthetic)
    train, val, test = (shards.split(s) for s in ("train", "val", "test"))
    # The configs a job builds under the authors' recipe: the dataclass defaults, then the model's own recipe
    # (HashModel.recipe, SNUH's), then these values.
    config, train_config = job_configs("authors", name, {**SMALL, "epochs": 3, "eval_k": 20, "seed": 3,
                                                         "device": "cpu"})
    result = fit(config, train_config, train, val=val)
    assert result.history and 0.0 <= result.best_value <= 1.0
    model = result.model.eval()
    codes = model.encode(place(test.features, torch.device("cpu")).range(0, len(test)))
    assert codes.dtype == torch.bool and codes.shape == (len(test), SMALL["bits"])

    folder = save_model(tmp_path / "model", model, shards.vocab)
    loaded = corrhash.load(folder)
    assert np.array_equal(loaded.encode_features(test.features), pack_codes(codes))
    text_codes = loaded.encode(TEXTS)
    assert text_codes.dtype == np.uint8 and text_codes.shape == (len(TEXTS), SMALL["bits"] // 8)

    # The plain-process launcher of the lifecycle with the same seed: the same codes as fit() above (given the
    # configs it builds itself). Two independent trainings from one seed giving equal codes
    # is also the determinism a second launcher run used to check.
    argv = ["--local", "--recipe", "authors", "--data", str(shards_synthetic), "--model", name, "--epochs", "3", "--eval-k", "20",
            "--seed", "3", "--out", str(tmp_path / "a")] + [f"--{key}={value}" for key, value in SMALL.items()]
    assert job("train").main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "results.json").read_text())["val_precision"] >= 0
    launched = corrhash.load(tmp_path / "a" / "model").encode(TEXTS)
    assert np.array_equal(launched, text_codes)  # fit() directly and the launcher train the same model


def _val_precision_at_32_bits(name: str, shards_path, train: TrainConfig) -> float:
    shards = TfidfShards(shards_path)
    return fit(ModelConfig(name=name, bits=32), train, shards.split("train"), val=shards.split("val")).best_value


@pytest.fixture(scope="module")
def lsh_on_20ng(shards_20ng_small) -> float:
    return _val_precision_at_32_bits("lsh", shards_20ng_small, TrainConfig(device="cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in list_models() if name != "lsh"])
def test_every_learned_method_beats_lsh_on_20ng(name, shards_20ng_small, lsh_on_20ng):
    """Real 20ng (1,500 documents per split, its 3,000 most frequent terms), 32 bits, val precision@100: each
    learned method clears LSH by 0.03 and by half again (LSH is near chance, 1/20). 10 epochs of batch 25 at lr 0.01,
    20 for S-RBM (its contrastive divergence learns slowest); the paper's schedule would take many times longer.
    Measured on these shards (issue 30, one seed; `pytest tests/test_methods.py -k beats -s` prints each score):
    LSH 0.058, so the floor is 0.088; at 10 epochs the VAEs 0.15-0.18, the -nbr models
    0.14-0.17 (the tightest, corrsh-mixture-nbr 0.138, 0.050 over the floor), STH 0.185, SpH 0.122; S-RBM 0.097 at
    10 epochs (too near the floor) and 0.110 at 20. At 20 epochs for all (before) the VAEs and -nbr models reached
    0.17-0.19, at twice the CPU (~20 s a method on one thread against ~9 s). A floor, not the paper:
    results/methods.md has full runs. One test per method, so that pytest-xdist shares them out."""
    short = TrainConfig(epochs=20 if name == "srbm" else 10, batch_size=25, lr=0.01, patience=5, device="cpu")
    shards = TfidfShards(shards_20ng_small)
    # SNUH at its authors' fixed KL weight (beta 0.05): at beta 1 its graph prior pulls every code to one value
    config = ModelConfig(name=name, bits=32, **({"beta": 0.05} if name in ("snuh", "corrsh-snuh") else {}))
    score = fit(config, short, shards.split("train"), val=shards.split("val")).best_value
    print(f"val p@100, 32 bits, 20ng-1500: {name} {score:.4f}, lsh {lsh_on_20ng:.4f}")
    assert score > lsh_on_20ng + 0.03 and score > 1.5 * lsh_on_20ng, (name, score, lsh_on_20ng)
