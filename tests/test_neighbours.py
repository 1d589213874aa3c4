"""The neighbourhood part (models/neighbours.py): its term and gradient against a hand-computed case, its place in
the one lifecycle (fit, the plain-process launcher, a grid cell) and its refusals."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from corrhash.data import TfidfShards
from corrhash.data.device_csr import place
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig, create_model, list_models, model_class
from corrhash.data.stream import ShardStream
from corrhash.ablate.grid import load_grid
from corrhash.runs.local import run_local
from corrhash.train.config import TrainConfig
from corrhash.train.loop import fit
from corrhash.train.neighbours import cached_graph, neighbour_source
from corrhash.train.streamed_pairs import StreamedNeighbourPairs
from corrhash.runs.spec import RunSpec
from test_grid import write

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")

NBR_MODELS = [name for name in list_models() if name.endswith("-nbr")]


def csr(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).to_sparse_csr()


def test_each_binary_vae_has_a_neighbour_version_with_the_part_in_its_space():
    assert NBR_MODELS == ["bmsh-nbr", "corrsh-mixture-nbr", "corrsh-nbr", "nash-nbr"]
    assert [name for name in list_models() if model_class(name).uses_neighbours] == sorted(
        NBR_MODELS + ["corrsh-snuh", "snuh"])
    for name in NBR_MODELS:
        plain = model_class(name.removesuffix("-nbr"))
        assert not plain.uses_neighbours
        assert model_class(name).search_space == {**plain.search_space, "neighbours": "randint:5:50",
                                                   "neighbour_weight": "loguniform:0.1:3",
                                                   "graph": "choice:knn,mutual"}


def test_pairwise_term_and_gradient_match_the_hand_computed_case():
    """A decoder with zero weights and bias log(0.5, 0.3, 0.2) gives those word probabilities for any code. Document
    0 has word 0 and neighbour words {1, 2}: the term is -(log 0.3 + log 0.2) = 2.8134, and its gradient in the
    bias is |x_j| softmax(b) - 1[x_j] = 2 (0.5, 0.3, 0.2) - (0, 1, 1) = (1, -0.4, -0.6). Document 1 has no
    neighbour (an empty row): no term."""
    model = create_model(ModelConfig(name="nash-nbr", bits=2, hidden=4, neighbour_weight=0.7), 3)
    with torch.no_grad():
        model.decoder.output.weight.zero_()
        model.decoder.output.bias.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2])))
    x = csr([[1.0, 0, 0], [0, 1.0, 0]])
    neighbours = csr([[0, 0.6, 0.8], [0, 0, 0]])
    noise = model.sample_noise(2, "cpu", torch.Generator().manual_seed(0))
    plain = model.loss_from_noise(x, noise)
    paired = model.loss_from_noise(x, noise, neighbours)
    term = -(math.log(0.3) + math.log(0.2))
    assert paired["neighbour"].item() == pytest.approx(term / 2, rel=1e-6)  # the batch mean: (2.8134 + 0) / 2
    assert paired["recon"].item() == pytest.approx(plain["recon"].item())
    assert paired["loss"].item() == pytest.approx(plain["loss"].item() + 0.7 * term / 2, rel=1e-6)
    (gradient,) = torch.autograd.grad(paired["loss"] - plain["loss"], model.decoder.output.bias)
    torch.testing.assert_close(gradient, 0.7 * torch.tensor([1.0, -0.4, -0.6]) / 2)


def test_a_plain_model_refuses_neighbours():
    model = create_model(ModelConfig(name="nash", bits=4, hidden=4), 3)
    with pytest.raises(TypeError, match="nash does not learn from neighbours"):
        model.loss(csr([[1.0, 0, 0]]), neighbours=csr([[0, 1.0, 0]]))


@pytest.mark.parametrize("name", NBR_MODELS)
def test_neighbours_change_what_a_model_learns_and_codes_need_no_graph(name, shards_synthetic):
    shards = TfidfShards(shards_synthetic)
    train, val = shards.split("train"), shards.split("val")
    config = dict(name=name, bits=16, hidden=32, rank=2, mixture=2, components=2, neighbours=5)
    fast = TrainConfig(epochs=2, eval_k=20, device="cpu")
    paired = fit(ModelConfig(**config), fast, train, val=val)
    unpaired = fit(ModelConfig(**config, neighbour_weight=0.0), fast, train, val=val)
    assert all("neighbour" in h and h["neighbour"] > 0 for h in paired.history)
    assert paired.history[-1]["loss"] > paired.history[-1]["recon"] + paired.history[-1]["neighbour"] * 0.99
    assert unpaired.history[-1]["loss"] < paired.history[-1]["loss"]  # weight 0: the term is reported, not added
    features = place(val.features, torch.device("cpu")).range(0, len(val))
    codes = paired.model.eval().encode(features)  # the encoder alone: no graph at serving time
    assert codes.shape == (len(val), 16)


def test_a_streamed_split_needs_the_graph_searched_first(shards_synthetic, tmp_path):
    shards = TfidfShards(shutil.copytree(shards_synthetic, tmp_path / "shards", ignore=shutil.ignore_patterns("graphs")))
    with pytest.raises(ConfigError, match=r"no cached document graph 25 wide.*python jobs/graph.py --data .*shards "
                                          r"--neighbours 25"):
        neighbour_source(shards, ModelConfig(name="nash-nbr", neighbours=5), ShardStream(shards, "train"))
    with pytest.raises(ConfigError, match="nash-nbr on a streamed train split reads .* row store"):
        fit(ModelConfig(name="nash-nbr", bits=8, hidden=8), TrainConfig(epochs=1, eval_k=5), ShardStream(shards, "train"),
            val=shards.split("val"))
    assert neighbour_source(shards, ModelConfig(name="sth"), ShardStream(shards, "train")) is None  # fits it whole


def test_a_nbr_model_trains_on_a_split_forced_to_stream(shards_synthetic, tmp_path):
    data = shutil.copytree(shards_synthetic, tmp_path / "shards", ignore=shutil.ignore_patterns("graphs"))
    shards = TfidfShards(data)
    cached_graph(shards, 25, "knn")  # what jobs/graph.py leaves
    config = ModelConfig(name="nash-nbr", bits=8, hidden=16, neighbours=6)
    stream = ShardStream(shards, "train", buffer_rows=100)
    source = neighbour_source(shards, config, stream)
    assert source.store.shape == (len(stream), shards.n_features)
    # every pair is a document and one of its graph neighbours, read by id from the row store
    whole = shards.split("train").features.toarray()
    graph = source.graph.toarray()
    pairs = StreamedNeighbourPairs(stream, source, torch.device("cpu"))
    seen = 0
    for x, neighbour in pairs.batches(torch.Generator().manual_seed(0), batch_size=32):
        x, neighbour = x.to_dense().numpy(), neighbour.to_dense().numpy()
        for row, paired in zip(x, neighbour):
            i = int(np.flatnonzero((whole == row).all(axis=1))[0])
            if paired.any():
                j = int(np.flatnonzero((whole == paired).all(axis=1))[0])
                assert graph[i, j] > 0
            seen += 1
    assert seen == len(stream) and stream.most_rows_held < 100 + 160  # one buffer: files until 100 rows, + carry
    # and through the one lifecycle, streamed
    spec = RunSpec(str(data), config, TrainConfig(epochs=2, eval_k=20, stream="always", stream_buffer=100))
    results = run_local(spec, tmp_path / "run", score_test=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(h["streamed"] == 1 and h["neighbour"] > 0 for h in history) and results["val_precision"] > 0


def test_a_grid_cell_trains_a_neighbour_model_through_the_lifecycle_and_caches_its_graph(shards_synthetic, tmp_path):
    data = shutil.copytree(shards_synthetic, tmp_path / "shards", ignore=shutil.ignore_patterns("graphs"))
    grid = load_grid(write(tmp_path, data, methods={"nash-nbr": {"neighbours": 6, "neighbour_weight": 0.5,
                                                                 "graph": "mutual"}},
                           fixed={"epochs": 2, "hidden": 32, "eval_k": 20}))
    (cell,) = grid.cells
    assert cell.axes["method"] == "nash-nbr" and cell.model.graph == "mutual"
    assert cell.id != load_grid(write(tmp_path, data, file="h.yaml", methods={"nash-nbr": {"neighbours": 6}},
                                      fixed={"epochs": 2, "hidden": 32, "eval_k": 20})).cells[0].id
    results = run_local(cell.spec(), tmp_path / "cell")  # what a cell runs inside its Ray task
    assert results["model"]["neighbour_weight"] == 0.5 and results["model"]["graph"] == "mutual"
    history = [json.loads(line) for line in (tmp_path / "cell" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["neighbour"] > 0 for h in history)
    (graph_file,) = (data / "graphs").glob("*.npz")
    assert "-train-exact-w25-" in graph_file.name  # one search, 25 wide: serves k 6, mutual
    mtime = graph_file.stat().st_mtime_ns
    run_local(cell.spec(), tmp_path / "again", score_test=False)
    # STH on the same corpus reads it too
    sth = load_grid(write(tmp_path, data, file="s.yaml", methods={"sth": {"neighbours": 9}},
                          fixed={"eval_k": 20})).cells[0]
    assert run_local(sth.spec(), tmp_path / "sth", score_test=False)["model"]["neighbours"] == 9
    assert graph_file.stat().st_mtime_ns == mtime and len(list((data / "graphs").glob("*.npz"))) == 1
