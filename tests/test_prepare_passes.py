"""The passes of `build_in_passes` (what `prepare_data.py text --ray` runs as Ray tasks), run here by `builtins.map`,
give what the in-memory build gives: the same manifest (content hash included), vocab.json and shard files, byte
for byte, and the same error messages. tests/test_prepare_ray.py runs them on Ray (marked slow)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from corrhash.data import TfidfRecipe
from corrhash.data.prepare import PrepareConfig, build_in_passes, prepare, run_prepare
from corrhash.errors import DataError

WORDS = [f"w{i}" for i in range(150)] + ["the", "and", "Café"]


def corpus(folder: Path, files: int, rows: int, seed: int, split_column: bool = True) -> list[str]:
    """`files` JSONL files of `rows` rows: topic-ish words, a few rows without labels, train/val/test or no split."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    paths = []
    for f in range(files):
        lines = []
        for r in range(rows):
            topic = int(rng.integers(0, 4))
            words = rng.choice(WORDS[topic * 30:topic * 30 + 60] + WORDS[120:], size=int(rng.integers(3, 40)))
            row = {"text": " ".join(words), "labels": [] if (f * rows + r) % 37 == 5 else [f"t{topic}"]}
            if split_column:
                row["split"] = ["train", "train", "train", "val", "test"][(f + r) % 5]
            lines.append(json.dumps(row))
        paths.append(folder / f"part-{f}.jsonl")
        paths[-1].write_text("\n".join(lines) + "\n")
    return [str(p) for p in paths]


def both(raw: list[str], tmp_path: Path, name: str, **options) -> tuple[Path, Path]:
    # One --name: a text corpus is otherwise named for its folder, and the two folders' manifests must be equal.
    config = dict(dataset="text", raw=raw, recipe=TfidfRecipe(min_df=2, max_df=1.0, min_tokens=3), rows_per_shard=45,
                  name="corpus")
    config.update(options)
    in_memory, passes = tmp_path / f"{name}-memory", tmp_path / f"{name}-passes"
    prepare(PrepareConfig(**config, out=in_memory))
    run_prepare(PrepareConfig(**config, out=passes), functools.partial(build_in_passes, map=map))
    return in_memory, passes


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("case", ["split_column", "no_split_column", "limit", "limit_no_split_column"])
def test_passes_write_what_the_in_memory_build_writes(tmp_path, case):
    raw = corpus(tmp_path / "raw", files=3, rows=70, seed=3, split_column="no_split" not in case)
    options = {"limit": 40, "rows_per_shard": 15} if case.startswith("limit") else {}
    in_memory, passes = both(raw, tmp_path, case, **options)
    same_files(in_memory, passes)
    manifest = json.loads((passes / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["shards"]) > 1 and manifest["dropped"]["no_labels"]
    documents = [manifest["splits"][s]["documents"] for s in ("train", "val", "test")]
    assert documents == ([40, 40, 40] if case == "limit" else [40, 21, 21] if case.startswith("limit") else documents)


def rows(path: Path, lines: list[dict]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize("case", ["repeated ids", "bad row", "no rows", "no labelled training", "empty after filtering",
                                  "split column in one file only"])
def test_passes_fail_as_the_in_memory_build_fails(tmp_path, case):
    good = corpus(tmp_path / "raw", files=1, rows=60, seed=4)
    options = {}
    if case == "repeated ids":
        raw = [rows(tmp_path / "a.jsonl", [{"id": 1, "text": "aa bb", "labels": ["x"]}]),
               rows(tmp_path / "b.jsonl", [{"id": 1, "text": "cc dd", "labels": ["y"]}])]
    elif case == "bad row":
        raw = [*good, rows(tmp_path / "bad.jsonl", [{"text": "aa", "labels": ["x"], "split": "train"},
                                                    {"text": 5, "labels": ["x"], "split": "train"}])]
    elif case == "no rows":
        raw = [*good, rows(tmp_path / "empty.jsonl", [])]
    elif case == "no labelled training":
        raw = [rows(tmp_path / "t.jsonl", [{"text": "aa bb cc", "labels": [], "split": "train"},
                                           {"text": "aa bb cc", "labels": ["x"], "split": "test"}])]
    elif case == "empty after filtering":
        raw, options = good, {"recipe": TfidfRecipe(min_df=1, max_df=1.0, min_tokens=400, max_tokens=500)}
    else:
        raw = [*good, rows(tmp_path / "nosplit.jsonl", [{"text": "aa bb", "labels": ["x"]}])]
    config = dict(dataset="text", raw=raw, recipe=TfidfRecipe(min_df=1, max_df=1.0, min_tokens=1))
    config.update(options)
    with pytest.raises(DataError) as in_memory:
        prepare(PrepareConfig(**config, out=tmp_path / "memory"))
    with pytest.raises(DataError) as passes:
        run_prepare(PrepareConfig(**config, out=tmp_path / "passes"), functools.partial(build_in_passes, map=map))
    assert str(passes.value) == str(in_memory.value)
    assert not (tmp_path / "memory").exists() and not (tmp_path / "passes").exists()
