"""Ablation grids: expansion into cells, stable ids, per-method overrides, every refusal, the shipped grids."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import write_synthetic_corpus
from corrhash.data import TfidfRecipe
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.errors import ConfigError
from corrhash.ablate.grid import Cell, load_grid

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "jobs" / "grids").glob("*.yaml"))


def write(tmp_path: Path, folder: Path | str, file: str = "g.yaml", **keys) -> Path:
    """A grid file: one 'syn' dataset at `folder`, CorrSH at 8 bits, seed 0, the authors' recipe (the dataclass
    defaults), unless `keys` say otherwise."""
    grid = {"recipe": "authors", "data": {"syn": str(folder)}, "methods": {"corrsh": {}}, "bits": [8], "seeds": [0],
            **keys}
    path = tmp_path / file
    path.write_text(yaml.safe_dump({k: v for k, v in grid.items() if v is not None}, sort_keys=False))
    return path


def test_a_mapping_of_axes_is_one_product(shards_synthetic, tmp_path):
    grid = load_grid(write(tmp_path, shards_synthetic, methods={"corrsh": {}, "nash": {}}, bits=[8, 16],
                           seeds=[0, 1, 2], axes={"rank": [0, 1], "dropout": [0.1, 0.2]}))
    assert len(grid.cells) == 2 * 2 * 3 * 2 * 2
    assert grid.axis_names == ["rank", "dropout"]
    assert len({c.id for c in grid.cells}) == len(grid.cells)
    first = grid.cells[0]
    assert list(first.axes) == ["dataset", "method", "bits", "seed", "rank", "dropout"]
    assert first.axes == {"dataset": "syn", "method": "corrsh", "bits": 8, "seed": 0, "rank": 0, "dropout": 0.1}
    assert first.label() == "syn corrsh 8b seed 0 rank=0 dropout=0.1"
    assert grid.datasets == {"syn": str(shards_synthetic)} and first.data == str(shards_synthetic)


def test_a_list_of_axes_is_the_union_of_products_and_equal_cells_merge(shards_synthetic, tmp_path):
    # Table 5's shape: rank x {10} and {10} x mixture share (10, 10): 4 + 4 - 1 settings.
    axes = [{"rank": [0, 1, 5, 10], "mixture": [10]}, {"rank": [10], "mixture": [1, 3, 5, 10]}]
    grid = load_grid(write(tmp_path, shards_synthetic, seeds=[0, 1, 2], axes=axes))
    assert len(grid.cells) == 7 * 3
    settings = {(c.axes["rank"], c.axes["mixture"]) for c in grid.cells}
    assert settings == {(0, 10), (1, 10), (5, 10), (10, 10), (10, 1), (10, 3), (10, 5)}


def test_per_method_overrides_win_over_axes_and_fixed(shards_synthetic, tmp_path):
    grid = load_grid(write(tmp_path, shards_synthetic, methods={"corrsh": {}, "nash": {"rank": 0, "epochs": 3}},
                           axes={"rank": [1, 5]}, fixed={"epochs": 7, "hidden": 32}))
    corrsh = [c for c in grid.cells if c.model.name == "corrsh"]
    nash = [c for c in grid.cells if c.model.name == "nash"]
    assert [c.model.rank for c in corrsh] == [1, 5] and {c.train.epochs for c in corrsh} == {7}
    # NASH's two cells are one configuration once the override pins rank: merged, and its axes say rank 0.
    assert len(nash) == 1 and nash[0].model.rank == 0 and nash[0].axes["rank"] == 0
    assert nash[0].train.epochs == 3 and nash[0].model.hidden == 32


def test_choice_fields_take_their_choices(shards_synthetic, tmp_path):
    grid = load_grid(write(tmp_path, shards_synthetic, methods={"nash-nbr": {"graph": "mutual"}},
                           axes={"encoder_input": ["tfidf", "binary"]}))
    assert [(c.model.graph, c.model.encoder_input) for c in grid.cells] == [("mutual", "tfidf"), ("mutual", "binary")]


def test_seeds_set_both_configs_and_the_cell_is_a_run_spec(shards_synthetic, tmp_path):
    grid = load_grid(write(tmp_path, shards_synthetic, seeds=[4], resources={"cpus": 2.5, "gpus": 0.25}))
    (cell,) = grid.cells
    assert cell.model.seed == cell.train.seed == 4 and cell.train.device == "auto"
    assert (cell.cpus, cell.gpus) == (2.5, 0.25)
    spec = cell.spec()
    assert spec.data == cell.data and spec.model == cell.model and spec.train == cell.train and spec.threads == 2


def test_ids_hash_the_configuration_not_the_grid(shards_synthetic, tmp_path):
    link = tmp_path / "elsewhere"
    link.symlink_to(shards_synthetic)
    one = load_grid(write(tmp_path, shards_synthetic, "one.yaml", name="one", bits=[8, 16]))
    other = load_grid(write(tmp_path, link, "two.yaml", name="two", methods={"nash": {}, "corrsh": {}},
                            fixed={"dropout": 0.2, "lr": 1e-3}))
    again = load_grid(write(tmp_path, shards_synthetic, "one.yaml", name="one", bits=[8, 16]))
    assert [c.id for c in one.cells] == [c.id for c in again.cells]
    assert all(re.fullmatch(r"[0-9a-f]{16}", c.id) for c in one.cells)
    # Same data (by content hash, not path), same configs (defaults written out or not): same id.
    same = {c.id for c in one.cells} & {c.id for c in other.cells}
    assert same == {one.cells[0].id} and one.cells[0].model.bits == 8


def test_a_cell_round_trips_through_json(shards_synthetic, tmp_path):
    grid = load_grid(write(tmp_path, shards_synthetic, axes={"anneal_step": [None, 0.02], "energy_terms": [True]},
                           resources={"cpus": 1, "gpus": 0.5}))
    for cell in grid.cells:
        back = Cell.from_dict(json.loads(json.dumps(cell.to_dict())))
        assert back == cell and list(back.axes) == list(cell.axes)


def test_describe_lists_every_cell_and_the_totals(shards_synthetic, tmp_path):
    grid = load_grid(write(tmp_path, shards_synthetic, methods={"corrsh": {}, "lsh": {}}, seeds=[0, 1],
                           resources={"cpus": 2, "gpus": 0.25}), name="renamed")
    text = grid.describe().splitlines()
    assert grid.name == "renamed" and len(text) == 5
    assert text[0].startswith(grid.cells[0].id) and "syn corrsh 8b seed 0" in text[0] and "gpus=0.25" in text[0]
    assert text[-1] == "4 cells, 8 CPU-slots, 1 GPU-slots; datasets: syn; methods: corrsh, lsh"


def test_environment_variables_and_relative_paths(shards_synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("GRID_TEST_DATA", str(shards_synthetic.parent))
    assert load_grid(write(tmp_path, "${GRID_TEST_DATA}/shards")).datasets["syn"] == str(shards_synthetic)
    monkeypatch.delenv("GRID_TEST_DATA")
    default = f"${{GRID_TEST_DATA:-{shards_synthetic.parent}}}/shards"
    assert load_grid(write(tmp_path, default)).datasets["syn"] == str(shards_synthetic)
    relative = load_grid(write(tmp_path, "shards"), data_root=shards_synthetic.parent)
    assert relative.datasets["syn"] == str(shards_synthetic)
    monkeypatch.chdir(shards_synthetic.parent)
    assert load_grid(write(tmp_path, "shards")).datasets["syn"] == str(shards_synthetic)


BAD = [
    ({"seed_list": [0]}, "seed_list: unknown key"),
    ({"bits": None}, "bits: missing"),
    ({"name": "two words"}, "name: 'two words'"),
    ({"methods": {"corrhs": {}}}, "methods.corrhs: unknown method (known: bmsh, bmsh-nbr, corrsh, corrsh-mixture"),
    ({"methods": {}}, "methods: expected a non-empty mapping"),
    ({"axes": {"rnak": [1]}}, "axes.rnak: not a ModelConfig or TrainConfig field"),
    ({"fixed": {"bits": 16}}, "fixed.bits: bits is set through the grid's bits key"),
    ({"axes": {"seed": [1, 2]}}, "axes.seed: seed is set through the grid's seeds key"),
    ({"methods": {"corrsh": {"name": "nash"}}}, "methods.corrsh.name: name is set through the grid's methods"),
    ({"fixed": {"device": "cuda"}}, "fixed.device: device is set through the grid's resources"),
    ({"axes": {"rank": ["5"]}}, "axes.rank: '5' (str): expected int"),
    ({"axes": {"rank": [True]}}, "axes.rank: True (bool): expected int"),
    ({"fixed": {"energy_terms": 1}}, "fixed.energy_terms: 1 (int): expected bool"),
    ({"fixed": {"lr": "1e-3"}}, "fixed.lr: '1e-3' (str): expected float (YAML reads 1e-3 as text"),
    ({"fixed": {"dropout": None}}, "fixed.dropout: None (NoneType): expected float"),
    ({"axes": {"graph": ["knn", "mutal"]}}, "axes.graph: 'mutal': expected one of knn, mutual"),
    ({"fixed": {"encoder_input": 1}}, "fixed.encoder_input: 1: expected one of tfidf, binary"),
    ({"axes": {"dropout": [0.1, 1.5]}},
     "cell dataset=syn method=corrsh bits=8 seed=0 dropout=1.5: invalid ModelConfig: dropout must be in [0, 1)"),
    ({"fixed": {"anneal_step": True}}, "fixed.anneal_step: True (bool): expected float | None"),
    ({"fixed": {"epochs": 0}}, "cell dataset=syn method=corrsh bits=8 seed=0: train option epochs=0"),
    ({"bits": []}, "bits: expected a non-empty list"),
    ({"bits": [8.0]}, "bits: 8.0 (float): expected int"),
    ({"seeds": []}, "seeds: expected a non-empty list"),
    ({"axes": {"rank": []}}, "axes.rank: expected a non-empty list"),
    ({"axes": []}, "axes: empty list"),
    ({"axes": [{"rank": [1]}, {}]}, "axes[1]: expected a non-empty mapping"),
    ({"fixed": {"rank": 1}, "axes": {"rank": [2]}}, "fixed.rank: also an axis"),
    ({"resources": {"cpus": -1}}, "resources.cpus: -1: must be a number > 0"),
    ({"resources": {"cpus": 0}}, "resources.cpus: 0: must be a number > 0"),
    ({"resources": {"gpus": -0.5}}, "resources.gpus: -0.5: must be between 0 and 1"),
    ({"resources": {"gpus": 1.5}}, "resources.gpus: 1.5: must be between 0 and 1 (a share of one GPU) or a whole"),
    ({"resources": {"memory": 2}}, "resources.memory: unknown resource"),
    ({"resources": {"gpus": "one"}}, "resources.gpus: 'one' is not a number"),
]


@pytest.mark.parametrize("keys, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_a_bad_grid_is_refused_naming_the_file_and_the_key(shards_synthetic, tmp_path, keys, message):
    path = write(tmp_path, shards_synthetic, **keys)
    with pytest.raises(ConfigError) as caught:
        load_grid(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value), str(caught.value)


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message(shards_synthetic, tmp_path):
    """Reliability review t4, R5: nine levels of aliases name 10^9 leaves in a few lines; the error's repr of the
    value expanded them (a hang, or a 32 MB error line at 10^7)."""
    levels = ["a0: &a0 [8, 8, 8, 8, 8, 8, 8, 8, 8, 8]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("resources:\n" + "".join(f"  {line}\n" for line in levels)  # anchors come before their use
                    + f"recipe: authors\ndata: {{syn: {shards_synthetic}}}\nmethods: {{corrsh: {{}}}}\n"
                    + "bits: [8, *a8]\nseeds: [0]\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_grid(path)
    assert time.monotonic() - started < 5
    assert len(str(caught.value)) < 500 and "bits: [[[" in str(caught.value), str(caught.value)


def test_missing_and_unprepared_data_and_unset_variables_are_refused(shards_synthetic, tmp_path, monkeypatch):
    path = write(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: data.syn: .*nowhere is not a prepared"):
        load_grid(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.syn: .*empty is not a prepared dataset .*manifest.json"):
        load_grid(write(tmp_path, tmp_path / "empty"))
    monkeypatch.delenv("GRID_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"data.syn: environment variable GRID_TEST_UNSET is not set"):
        load_grid(write(tmp_path, "${GRID_TEST_UNSET}/shards"))
    with pytest.raises(ConfigError, match=r"data.bad label: a dataset label uses letters"):
        load_grid(write(tmp_path, shards_synthetic, data={"bad label": str(shards_synthetic)}))
    link = tmp_path / "same"
    link.symlink_to(shards_synthetic)
    with pytest.raises(ConfigError, match=r"data.again: .*same holds the same data as data.syn"):
        load_grid(write(tmp_path, shards_synthetic, data={"syn": str(shards_synthetic), "again": str(link)}))
    with pytest.raises(ConfigError, match=r"g.yaml: expected a mapping"):
        (tmp_path / "g.yaml").write_text("- just a list\n")
        load_grid(tmp_path / "g.yaml")
    with pytest.raises(ConfigError, match=r"absent.yaml: cannot read the grid"):
        load_grid(tmp_path / "absent.yaml")


@pytest.fixture(scope="module")
def four_datasets(shards_synthetic, tmp_path_factory) -> Path:
    """A folder with prepared data under each label the shipped grids use. Each label gets different documents
    (a seeded synthetic corpus): cells are keyed by the data's content hash, and two labels on the same data
    are refused."""
    root = tmp_path_factory.mktemp("grid-data")
    (root / "synthetic").symlink_to(shards_synthetic)
    for seed, label in enumerate(("tmc", "reuters", "20ng-paper"), start=1):
        prepare(PrepareConfig(dataset="text", raw=write_synthetic_corpus(root / f"{label}.jsonl", seed=seed),
                              out=root / label, recipe=TfidfRecipe(min_df=2, max_df=1.0)))
    return root


EXPECTED_CELLS = {"paper-tables": 8 * 5 * 3 * 3, "table4-time": (6 + 1) * 3, "table5-reuters": (7 + 1) * 3,
                  "energy-terms": 2 * 2 * 3, "kl-anneal": 2 * 2 * 3, "mixture-prior": 4 * 3 * 3, "smoke": 8}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_grid_loads(four_datasets, monkeypatch, path):
    monkeypatch.setenv("CORRHASH_DATA", str(four_datasets))
    grid = load_grid(path)
    assert grid.name == path.stem and grid.description
    assert len(grid.cells) == EXPECTED_CELLS[path.stem], grid.describe()
    assert path.read_text().startswith("#") and "jobs/prepare_data.py" in path.read_text()


def test_every_grid_is_tested():
    assert sorted(p.stem for p in SHIPPED) == sorted(EXPECTED_CELLS)


def test_loading_a_grid_imports_neither_ray_nor_mlflow():
    """jobs/ablate.py --dry-run checks a grid on a laptop without a cluster."""
    code = ("import sys, corrhash.ablate.grid; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
