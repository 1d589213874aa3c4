"""The shared epoch loop: learning and selection on real (sampled) 20ng shards; stopping, exact resume, the
checkpoint format and the train job on synthetic shards (no raw corpus needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from badinput import job, run_job
from corrhash.artifact import load_model
from corrhash.data import TfidfShards
from corrhash.data.device_csr import DeviceCSR
from corrhash.models import ModelConfig, create_model, list_models
from corrhash.runs.finish import RESULT_KEYS
from corrhash.train import checkpoint
from corrhash.train import Evaluator, TrainConfig, TrainState, fit, new_state

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(hidden=200, rank=4, mixture=4)
# Enough steps on 1500 documents to get well past the all-codes-alike start (chance p@100 is 0.05).
FAST = TrainConfig(epochs=10, lr=5e-3, batch_size=20, seed=0)


@pytest.fixture(scope="module")
def splits(shards_20ng_small):
    shards = TfidfShards(shards_20ng_small)
    return shards.split("train"), shards.split("val")


@pytest.fixture(scope="module")
def synthetic(shards_synthetic):
    """Train and val of the synthetic shards: loop mechanics (stopping, resume, checkpoints) on any clone."""
    shards = TfidfShards(shards_synthetic)
    return shards.split("train"), shards.split("val")


def test_device_csr_batches_match_scipy_rows(splits):
    train, _ = splits
    rows = DeviceCSR(train.features, torch.device("cpu"))
    index = torch.tensor([5, 0, 1499, 5, 731])
    batch = rows.rows(index)
    np.testing.assert_array_equal(batch.to_dense().numpy(), train.features[index.numpy()].toarray())
    chunks = list(rows.chunks(400))
    assert [c.shape[0] for c in chunks] == [400, 400, 400, 300]
    np.testing.assert_array_equal(chunks[1].to_dense().numpy(), train.features[400:800].toarray())


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_on_real_documents(name, splits):
    """A few steps on real 20ng rows: finite terms, and a gradient reaches every parameter; models without epochs
    give codes that are neither all 0 nor all 1."""
    train, _ = splits
    rows = DeviceCSR(train.features, torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=name, bits=32, hidden=64, rank=4, mixture=4), train.features.shape[1])
    if not model.trainable:  # fitted in closed form (SpH, STH; nothing for LSH), as fit() does
        model.fit_closed_form(train.features)
        codes = model.encode(rows.range(0, 200))
        assert codes.shape == (200, 32) and 0 < codes.float().mean() < 1
        return
    model.end_epoch()  # a non-zero KL weight, so the prior's parameters (bmsh, corrsh-mixture) get gradients too
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        # -nbr models: the next 100 documents stand in for sampled neighbours
        neighbours = rows.range(100 * step + 100, 100 * step + 200) if model.uses_neighbours else None
        terms = model(rows.range(100 * step, 100 * step + 100), generator=generator, neighbours=neighbours)
        assert all(torch.isfinite(v) for v in terms.values())
        optimizer.zero_grad()
        terms["loss"].backward()
        for pname, parameter in model.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), pname
            assert parameter.grad.abs().sum() > 0, pname
        optimizer.step()


@pytest.mark.slow  # trains 2 models for 10 epochs on real documents (35-50 s)
def test_fit_learns_and_restores_best_weights(splits):
    train, val = splits
    lsh = fit(ModelConfig(name="lsh", bits=32), TrainConfig(), train, val=val)
    result = fit(ModelConfig(name="corrsh", bits=32, **SMALL), FAST, train, val=val)
    history = result.history
    assert [h["epoch"] for h in history] == list(range(1, 11))
    assert all(np.isfinite([h["loss"], h["recon"], h["kl"]]).all() for h in history)
    assert history[-1]["recon"] < history[0]["recon"]  # it learns to reconstruct
    assert history[-1]["kl_weight"] == pytest.approx(10 / (50 * 4 + 50 * 4))
    assert result.best_value == max(h["val_precision"] for h in history)
    assert result.best_value > 1.5 * lsh.best_value  # better than random projections
    again = Evaluator(train, val, torch.device("cpu"))(result.model)
    assert again.tie_aware == pytest.approx(result.best_value)  # best weights were restored


def test_early_stopping_with_patience(synthetic):
    train, val = synthetic
    # lr = 0: the encoder never changes, so validation precision never improves after epoch 1.
    result = fit(ModelConfig(name="nash", bits=16, hidden=64), TrainConfig(epochs=50, lr=1e-12, patience=3),
                 train, val=val)
    assert len(result.history) == 4 and result.best_epoch == 1


def test_same_seed_same_run_and_resume_is_exact(synthetic, tmp_path):
    train, val = synthetic
    model_config = ModelConfig(name="corrsh", bits=16, **SMALL)
    straight = fit(model_config, TrainConfig(epochs=3, seed=7), train, val=val)
    twice = fit(model_config, TrainConfig(epochs=3, seed=7), train, val=val)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in twice.history]

    def stop_after_two(metrics, state: TrainState):
        if metrics["epoch"] == 2:
            checkpoint.save(tmp_path, state)
            return True
        return False

    fit(model_config, TrainConfig(epochs=3, seed=7), train, val=val, on_epoch=stop_after_two)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.STATE_FILE, checkpoint.generator_file(0)])
    state = new_state(model_config, TrainConfig(seed=7), train.features.shape[1], torch.device("cpu"))
    checkpoint.restore(tmp_path, state, 0, torch.device("cpu"))
    resumed = fit(model_config, TrainConfig(epochs=3, seed=7), train, val=val, state=state)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]  # bit-exact continuation
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


def test_checkpoint_keeps_one_copy_of_the_best_weights(synthetic, tmp_path):
    """An epoch that is the best so far stores its weights once; later epochs carry the best copy."""
    train, val = synthetic
    config = ModelConfig(name="nash", bits=16, hidden=64)

    def save_each(metrics, state: TrainState):
        folder = tmp_path / str(metrics["epoch"])
        folder.mkdir()
        checkpoint.save(folder, state)

    # lr ~ 0: the encoder never changes, so epoch 1 stays the best one.
    result = fit(config, TrainConfig(epochs=3, lr=1e-12), train, val=val, on_epoch=save_each)
    assert result.best_epoch == 1
    on_disk = [torch.load(tmp_path / str(e) / checkpoint.STATE_FILE, weights_only=True) for e in (1, 2, 3)]
    assert [bool(p["best_weights"]) for p in on_disk] == [False, True, True]
    for epoch in (1, 3):
        model, payload = checkpoint.best_model(tmp_path / str(epoch), config, train.features.shape[1])
        assert payload["best_epoch"] == 1
        for key, value in result.model.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.slow  # trains 2 models for 10 epochs on real documents (35-50 s)
def test_corrsh_without_rank_matches_nash(splits):
    """v = 0, k = 1 makes CorrSH an independent-bit model: it must learn about as well as NASH."""
    train, val = splits
    corrsh = fit(ModelConfig(name="corrsh", bits=32, hidden=200, rank=0, mixture=1), FAST, train, val=val)
    nash = fit(ModelConfig(name="nash", bits=32, hidden=200), FAST, train, val=val)
    assert nash.best_value > 0.09 and corrsh.best_value > 0.09  # both well above chance (0.05)
    assert abs(corrsh.best_value - nash.best_value) < 0.04


def test_train_job_writes_a_loadable_model(shards_synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "jobs/train.py", "--local", "--data", str(shards_synthetic), "--out", str(out),
                           "--model", "corrsh", "--bits", "16", "--hidden", "100", "--epochs", "2"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "test precision@100" in done.stdout and "epoch   2" in done.stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results) == list(RESULT_KEYS) and results["launcher"] == "local"
    job("quality_table").main([str(out / "results.json")])
    assert f"| synthetic | corrsh | {results['test_precision']:.4f} |" in capsys.readouterr().out
    assert results["epochs_run"] == 2 and len((out / "metrics.jsonl").read_text().splitlines()) == 2
    model, featurizer, info = load_model(out / "model")
    assert info["content_hash"] == TfidfShards(shards_synthetic).content_hash
    shards = TfidfShards(shards_synthetic)
    precision = Evaluator(shards.split("train"), shards.split("test"), torch.device("cpu"))(model)
    assert precision.tie_aware == pytest.approx(results["test_precision"], abs=1e-12)
    codes = model.encode(torch.from_numpy(featurizer.transform(["the space shuttle launch"]).toarray()))
    assert codes.shape == (1, 16) and codes.dtype == torch.bool


def test_train_job_rejects_bad_options(shards_synthetic, tmp_path, capsys):
    # The job's main(argv) in this process (badinput.run_job); test_train_job_writes_a_loadable_model runs the script.
    status, stderr = run_job("train", ["--local", "--data", shards_synthetic, "--out", tmp_path / "r",
                                       "--batch-size", "0"], capsys)
    assert status == 2 and "batch_size=0" in stderr
    status, stderr = run_job("train", ["--local", "--data", tmp_path / "nothing", "--out", tmp_path / "r"], capsys)
    assert status == 2 and "manifest.json" in stderr
    assert not (tmp_path / "r").exists()
