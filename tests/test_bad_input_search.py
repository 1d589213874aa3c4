"""jobs/search.py and corrhash.load on bad input (review R10): a named error and exit 2, nothing written.

A tiny model is trained here on a synthetic corpus and registered in a real MLflow sqlite store, so
every case runs the real loading code in-process (tests/badinput.py) in milliseconds.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import corrhash
from badinput import run_job, run_job_output, tiny_model, tree
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.errors import DataError
from corrhash.retrieval.index import HammingIndex
from corrhash.tracking.runs import ensure_experiment, log_hashing_model
from test_data_files import LOOSE, synthetic_rows, write_jsonl

UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained 16-bit model folder, its corpus, an index of it, and a registry holding it as tiny@champion."""
    root = tmp_path_factory.mktemp("search")
    rows = synthetic_rows(120)
    corpus = write_jsonl(root / "corpus.jsonl", rows)
    prepare(PrepareConfig(dataset="text", raw=corpus, out=root / "data", recipe=LOOSE))
    model = tiny_model(root / "data", root / "model")
    queries = root / "queries.txt"
    queries.write_text("orbit rocket launch\nhockey goal team\n")
    index = corrhash.load(model).index([r["text"] for r in rows], ids=[r["id"] for r in rows])
    index.save(root / "index.npz")

    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        client = MlflowClient(tracking_uri)
        experiment = ensure_experiment(client, "bad-input")
        log_hashing_model(tracking_uri, client.create_run(experiment).info.run_id, model, ["orbit"],
                          registered_name="tiny")
        client.set_registered_model_alias("tiny", "champion", "1")
        run_without_model = client.create_run(experiment).info.run_id
        mlflow.set_tracking_uri(None)  # log_hashing_model set it process-wide
    return SimpleNamespace(root=root, model=model, corpus=corpus, queries=queries, index=root / "index.npz",
                           codes=index.codes, ids=index.ids, identity=index.meta["model"], tracking_uri=tracking_uri,
                           run_without_model=run_without_model)


class RunsCode:
    """Unpickling this runs code: it must never happen (it would leave PWNED in the cwd)."""

    def __reduce__(self):
        return os.system, ("touch PWNED",)


# ---------------------------------------------------------------- models: (world, tmp) -> (model spec, names)


def damaged_model(world, tmp: Path, damage) -> Path:
    model = tmp / "model"
    shutil.copytree(world.model, model)
    damage(model)
    return model


def edit_info(model: Path, edit) -> None:
    info = json.loads((model / "model.json").read_text())
    edit(info)
    (model / "model.json").write_text(json.dumps(info))


def edit_vocab(model: Path, edit) -> None:
    vocab = json.loads((model / "vocab.json").read_text())
    edit(vocab)
    (model / "vocab.json").write_text(json.dumps(vocab).replace('"NaN"', "NaN"))


def link_outside(model: Path, world, tmp: Path) -> None:
    shutil.copytree(world.model, tmp / "elsewhere")
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(tmp / "elsewhere" / "model.safetensors")


def nan_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(model / "model.safetensors"))
    name = next(key for key, tensor in sorted(state.items()) if tensor.is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(model / "model.safetensors"))


def mlflow_model_pointing_to(world, tmp: Path, path: str) -> Path:
    """An MLflow model folder whose MLmodel sends corrhash_model outside itself, to a valid model."""
    shutil.copytree(world.model, tmp / "outside")
    folder = tmp / "mlflow_model"
    folder.mkdir()
    (folder / "MLmodel").write_text(
        f"flavors:\n  python_function:\n    artifacts:\n      corrhash_model:\n        path: {path}\n")
    return folder


MODEL_CASES = {
    "runs-unknown-id": lambda w, t: (f"runs:/{UNKNOWN_RUN}/model",) * 2,
    "models-unknown-name": lambda w, t: ("models:/no-such@champion",) * 2,
    "models-unknown-alias": lambda w, t: ("models:/tiny@nope",) * 2,
    "runs-without-model": lambda w, t: (f"runs:/{w.run_without_model}/model",) * 2,
    "runs-path-traversal": lambda w, t: ("runs:/../../etc/model",) * 2,
    "no-weights": lambda w, t: (damaged_model(w, t, lambda m: (m / "model.safetensors").unlink()),
                                "model.safetensors"),
    "model-json-invalid": lambda w, t: (damaged_model(w, t, lambda m: (m / "model.json").write_text("{oops")),
                                        "model.json"),
    "model-json-list": lambda w, t: (damaged_model(w, t, lambda m: (m / "model.json").write_text("[]")),
                                     "model.json"),
    "unknown-config-key": lambda w, t: (damaged_model(w, t, lambda m: edit_info(
        m, lambda i: i["model"].update(colour="red"))), "colour"),
    "wrong-n-features": lambda w, t: (damaged_model(w, t, lambda m: edit_info(
        m, lambda i: i.update(n_features=i["n_features"] + 1))), "model.safetensors"),
    "no-vocab": lambda w, t: (damaged_model(w, t, lambda m: (m / "vocab.json").unlink()), "vocab.json: missing"),
    # Reliability review t4, R1: absurd sizes were allocated (4.1 GB, then a traceback) before any check.
    "absurd-bits": lambda w, t: (damaged_model(w, t, lambda m: edit_info(
        m, lambda i: i["model"].update(bits=10**9))), "does not hold the weights model.json describes"),
    "absurd-hidden": lambda w, t: (damaged_model(w, t, lambda m: edit_info(
        m, lambda i: i["model"].update(hidden=10**9))), "model.safetensors"),
    "absurd-n-features": lambda w, t: (damaged_model(w, t, lambda m: edit_info(
        m, lambda i: i.update(n_features=10**9))), "model.safetensors"),
    "n-features-not-int": lambda w, t: (damaged_model(w, t, lambda m: edit_info(
        m, lambda i: i.update(n_features=str(i["n_features"])))), "n_features must be a positive integer"),
    "model-json-deep": lambda w, t: (damaged_model(w, t, lambda m: (m / "model.json").write_text("[" * 100_000)),
                                     "nested too deeply"),
    "nan-weights": lambda w, t: (damaged_model(w, t, nan_weights), "NaN or infinite"),
    # R7: a link out of the folder loaded another model's weights (and Payload.of shipped them to replicas).
    "weights-link-outside": lambda w, t: (damaged_model(w, t, lambda m: link_outside(m, w, t)),
                                          "outside the model folder"),
    "nan-idf": lambda w, t: (damaged_model(w, t, lambda m: edit_vocab(m, lambda v: v["idf"].__setitem__(0, "NaN"))),
                             "idf must hold one finite positive number per term"),
    "mlmodel-path-escapes": lambda w, t: (mlflow_model_pointing_to(w, t, "../outside"), "../outside"),
    "mlmodel-path-absolute": lambda w, t: (mlflow_model_pointing_to(w, t, str(t / "outside")), "outside"),
    "not-a-model": lambda w, t: (w.root / "data", "not a corrhash model"),
}


# ---------------------------------------------------------------- search.py: (world, tmp) -> (argv, names)


def write_index(tmp: Path, codes, ids, sidecar="{\"bits\": 16}") -> Path:
    path = tmp / "index.npz"
    with open(path, "wb") as handle:
        np.savez(handle, codes=codes, ids=ids)
    path.with_suffix(".json").write_text(sidecar)
    return path


def other_weights(world, tmp: Path) -> Path:
    """A copy of the model with one weight changed: another model of the same bits and vocabulary."""
    from safetensors.torch import load_file, save_file

    model = tmp / "other-model"
    shutil.copytree(world.model, model)
    state = load_file(str(model / "model.safetensors"))
    name = next(key for key, tensor in sorted(state.items()) if tensor.is_floating_point())
    state[name] = state[name] + 1
    save_file(state, str(model / "model.safetensors"))
    return model


def with_shown(tmp: Path, world, shown: bytes) -> Path:
    path = write_index(tmp, world.codes, world.ids, json.dumps({"bits": 16, "model": world.identity}))
    with open(path, "wb") as handle:
        np.savez(handle, codes=world.codes, ids=world.ids, shown=np.frombuffer(shown, np.uint8))
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def with_index(world, index: Path, *names, file: Path | None = None) -> tuple[list, tuple]:
    """Search `index`; the error names `file` (default: the index itself) and `names`."""
    return ["--model", world.model, "--index", index, "--queries", world.queries], (file or index, *names)


def with_corpus(world, corpus: Path, *names) -> tuple[list, tuple]:
    return ["--model", world.model, "--corpus", corpus, "--queries", world.queries], (corpus, *names)


def pickled_npz(tmp: Path) -> Path:
    path = tmp / "index.npz"
    with open(path, "wb") as handle:
        np.savez(handle, codes=np.zeros((1, 2), np.uint8), ids=np.array([RunsCode()], dtype=object))
    path.with_suffix(".json").write_text('{"bits": 16}')
    return path


def renamed(tmp: Path, write) -> Path:
    path = tmp / "index.npz"
    with open(path, "wb") as handle:
        write(handle)
    path.with_suffix(".json").write_text('{"bits": 16}')
    return path


def jsonl_with_id(tmp: Path, line_2_id) -> Path:
    rows = [{"id": 0, "text": "orbit rocket"}, {"id": line_2_id, "text": "hockey goal"}]
    return write_jsonl(tmp / "corpus.jsonl", rows)


def with_model(world, tmp: Path, model_case) -> tuple[list, tuple]:
    model, named = MODEL_CASES[model_case](world, tmp)
    return ["--model", model, "--corpus", world.corpus, "--queries", world.queries], (named,)


SEARCH_CASES = {
    **{name: lambda w, t, name=name: with_model(w, t, name) for name in MODEL_CASES},
    "index-pickled-object-array": lambda w, t: with_index(w, pickled_npz(t), "pickle"),
    "index-is-a-pickle": lambda w, t: with_index(w, renamed(t, lambda h: pickle.dump(RunsCode(), h)), "pickle"),
    "index-is-a-npy": lambda w, t: with_index(w, renamed(t, lambda h: np.save(h, w.codes)), ".npy"),
    "index-length-mismatch": lambda w, t: with_index(w, write_index(t, w.codes[:-1], w.ids), "codes"),
    "index-duplicate-ids": lambda w, t: with_index(w, write_index(t, w.codes, np.zeros(len(w.ids), np.int64)),
                                                   "ids must be unique"),
    "index-sidecar-without-bits": lambda w, t: with_index(w, write_index(t, w.codes, w.ids, "{}"), "bits",
                                                          file=t / "index.json"),
    "index-sidecar-invalid": lambda w, t: with_index(w, write_index(t, w.codes, w.ids, "{bits"),
                                                     file=t / "index.json"),
    "index-sidecar-wrong-size": lambda w, t: with_index(w, write_index(t, w.codes, w.ids, '{"bits": 16, "size": 3}'),
                                                        "3", file=t / "index.json"),
    "index-wider-than-model": lambda w, t: with_index(w, write_index(t, np.tile(w.codes, 2), w.ids), "bytes"),
    "index-narrower-than-model": lambda w, t: with_index(w, write_index(t, w.codes[:, :1], w.ids), "bytes"),
    "index-32-bits": lambda w, t: with_index(w, write_index(t, np.tile(w.codes, 2), w.ids, '{"bits": 32}'), "32"),
    "index-float-codes": lambda w, t: with_index(w, write_index(t, w.codes.astype(np.float32), w.ids), "float32"),
    "index-float-ids": lambda w, t: with_index(w, write_index(t, w.codes, w.ids.astype(np.float64)), "float64"),
    "index-given-as-sidecar": lambda w, t: with_index(w, w.index.with_suffix(".json")),
    "index-of-another-model": lambda w, t: (["--model", other_weights(w, t), "--index", w.index, "--queries",
                                             w.queries], (w.index, w.model, t / "other-model", "--allow-other-model")),
    "index-without-model-identity": lambda w, t: with_index(w, write_index(t, w.codes, w.ids, '{"bits": 16}'),
                                                            "older corrhash", "--allow-other-model"),
    "index-shown-not-json": lambda w, t: with_index(w, with_shown(t, w, b"[oops"), "shown"),
    "index-shown-one-short": lambda w, t: with_index(w, with_shown(t, w, json.dumps([None] * 119).encode()),
                                                     "shown", "120"),
    "index-missing": lambda w, t: with_index(w, t / "nothing.npz"),
    "queries-binary": lambda w, t: (["--model", w.model, "--index", w.index, "--queries",
                                     write_bytes(t / "q.txt", bytes(range(256)))], (t / "q.txt", "line 2")),
    "queries-missing": lambda w, t: (["--model", w.model, "--index", w.index, "--queries", t / "q.txt"],
                                     (t / "q.txt",)),
    "queries-folder": lambda w, t: (["--model", w.model, "--index", w.index, "--queries", t], (t,)),
    "k-zero": lambda w, t: (["--model", w.model, "--index", w.index, "--queries", w.queries, "--k", 0], ("--k",)),
    "k-negative": lambda w, t: (["--model", w.model, "--index", w.index, "--queries", w.queries, "--k", -1],
                                ("--k",)),
    "corpus-object-id": lambda w, t: with_corpus(w, jsonl_with_id(t, {"doc": 1}), "line 2"),
    "corpus-float-id": lambda w, t: with_corpus(w, jsonl_with_id(t, 1.5), "line 2"),
    "corpus-mixed-ids": lambda w, t: with_corpus(w, jsonl_with_id(t, "doc-1"), "line 2"),
    "corpus-binary": lambda w, t: with_corpus(w, write_bytes(t / "docs.txt", bytes(range(256)) * 4)),
    "corpus-empty": lambda w, t: with_corpus(w, write_bytes(t / "docs.txt", b"\n \n")),
    "index-out-json": lambda w, t: (["--model", w.model, "--index", w.index, "--index-out", t / "idx.json"],
                                    ("--index-out",)),
}


@pytest.fixture
def case_dir(tmp_path, monkeypatch, world):
    """The case's own folder, also the cwd (so a stray ./mlflow.db or PWNED would show up in it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.tracking_uri)
    return tmp_path


@pytest.mark.parametrize("name", SEARCH_CASES)
def test_search_refuses_bad_input(name, world, case_dir, capsys):
    argv, names = SEARCH_CASES[name](world, case_dir)
    if "--index-out" not in argv:
        argv += ["--index-out", case_dir / "out" / "idx.npz"]
    inputs, world_before = tree(case_dir), tree(world.root)
    status, stderr = run_job("search", argv, capsys)
    assert status == 2, f"exit {status}, stderr:\n{stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for expected in names:
        assert str(expected) in errors[0], f"{expected!r} not named in: {errors[0]}"
    assert tree(case_dir) == inputs  # no output, no ./mlflow.db, no PWNED, inputs intact
    assert tree(world.root) == world_before


@pytest.mark.parametrize("name", MODEL_CASES)
def test_load_raises_data_error(name, world, case_dir):
    spec, named = MODEL_CASES[name](world, case_dir)
    with pytest.raises(DataError) as caught:
        corrhash.load(spec)
    assert str(named) in str(caught.value) and "\n" not in str(caught.value)


def test_no_vocab_message_is_not_about_precomputed_features(world, case_dir):
    model, _ = MODEL_CASES["no-vocab"](world, case_dir)
    with pytest.raises(DataError) as caught:
        corrhash.load(model)
    assert "precomputed" not in str(caught.value)


def test_models_uri_without_tracking_uri_is_refused_without_creating_a_store(world, case_dir, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    status, stderr = run_job("search", ["--model", "models:/tiny@champion", "--index", world.index,
                                        "--queries", world.queries], capsys)
    assert status == 2 and "MLFLOW_TRACKING_URI" in stderr and "models:/tiny@champion" in stderr, stderr
    assert list(case_dir.iterdir()) == []  # MLflow's default would have created ./mlflow.db


def test_models_uri_uses_an_existing_mlflow_db_in_the_cwd(world, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(world.root)
    status, stderr = run_job("search", ["--model", "models:/tiny@champion", "--index", world.index,
                                        "--queries", world.queries], capsys)
    assert status == 0, stderr


# ---------------------------------------------------------------- what works


def answers(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_registered_model_searches(world, case_dir, capsys):
    status, stdout, stderr = run_job_output("search", ["--model", "models:/tiny@champion", "--corpus", world.corpus,
                                                       "--queries", world.queries, "--k", 3], capsys)
    assert status == 0, stderr
    assert [len(a["hits"]) for a in answers(stdout)] == [3, 3]


def test_a_registered_models_index_records_its_version_and_serves_the_same_weights(world, case_dir, capsys):
    """models:/tiny@champion is recorded as the version it named, with the logged model's id and the weights'
    hash; the same weights from the model's folder search that index as it answered (labels kept)."""
    out = case_dir / "idx.npz"
    argv = ["--corpus", world.root / "data", "--queries", world.queries, "--k", 3]
    status, stdout, stderr = run_job_output("search", ["--model", "models:/tiny@champion", *argv, "--index-out", out],
                                            capsys)
    assert status == 0, stderr
    recorded = json.loads(out.with_suffix(".json").read_text())["model"]
    assert recorded["weights_sha256"] == corrhash.load(world.model).weights_sha256 == world.identity["weights_sha256"]
    assert (recorded["uri"], recorded["registered_name"], recorded["registered_version"]) == \
        ("models:/tiny@champion", "tiny", "1")
    version = MlflowClient(world.tracking_uri).get_model_version("tiny", "1")
    assert version.source == f"models:/{recorded['model_id']}" and recorded["model_id"].startswith("m-")
    assert recorded["run_id"] == version.run_id
    status, again, stderr = run_job_output("search", ["--model", world.model, "--index", out,
                                                      "--queries", world.queries, "--k", 3], capsys)
    assert status == 0 and "warning" not in stderr, stderr
    assert answers(again) == answers(stdout) and all("labels" in h for a in answers(again) for h in a["hits"])
    assert corrhash.load("models:/tiny/1").identity == {**recorded, "uri": "models:/tiny/1"}


def test_hits_show_what_the_document_is(world, capsys):
    """A shard folder keeps no text: its hits carry their label names; a text corpus's hits their text's start."""
    rows = {row["id"]: row for row in synthetic_rows(120)}
    status, stdout, stderr = run_job_output("search", ["--model", world.model, "--corpus", world.root / "data",
                                                       "--queries", world.queries, "--k", 3], capsys)
    assert status == 0, stderr
    hits = [hit for answer in answers(stdout) for hit in answer["hits"]]
    assert hits and all(hit["labels"] == sorted(rows[hit["id"]]["labels"]) and "text" not in hit for hit in hits)
    status, stdout, stderr = run_job_output("search", ["--model", world.model, "--corpus", world.corpus,
                                                       "--queries", world.queries, "--k", 3], capsys)
    assert status == 0, stderr
    hits = [hit for answer in answers(stdout) for hit in answer["hits"]]
    assert hits and all(hit["text"] == rows[hit["id"]]["text"][:80] and "labels" not in hit for hit in hits)


def test_string_ids_round_trip_without_pickle(world, case_dir, capsys):
    texts = ["orbit rocket launch moon", "hockey goal team season"]
    corpus = write_jsonl(case_dir / "docs.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)])
    out = case_dir / "idx.npz"
    status, _, stderr = run_job_output("search", ["--model", world.model, "--corpus", corpus, "--index-out", out],
                                       capsys)
    assert status == 0, stderr
    with np.load(out, allow_pickle=False) as arrays:
        assert arrays["ids"].dtype.kind == "U"
    queries = write_bytes(case_dir / "q.txt", b"hockey goal\n")
    status, stdout, stderr = run_job_output("search", ["--model", world.model, "--index", out, "--queries", queries,
                                                       "--k", 2], capsys)
    assert status == 0, stderr
    assert {hit["id"] for hit in answers(stdout)[0]["hits"]} == {"doc-0", "doc-1"}


def test_query_without_vocabulary_terms_warns(world, case_dir, capsys):
    queries = write_bytes(case_dir / "q.txt", "café münchen\norbit rocket\n".encode())
    status, stdout, stderr = run_job_output("search", ["--model", world.model, "--index", world.index,
                                                       "--queries", queries, "--k", 2], capsys)
    lines = answers(stdout)
    assert status == 0 and [line["in_vocabulary"] for line in lines] == [0, 2]
    assert "warning: query 0" in stderr and len(lines[0]["hits"]) == 2


def test_empty_queries_file_answers_nothing(world, case_dir, capsys):
    queries = write_bytes(case_dir / "q.txt", b"\n  \n")
    status, stdout, stderr = run_job_output("search", ["--model", world.model, "--index", world.index,
                                                       "--queries", queries], capsys)
    assert status == 0 and stdout == "", stderr


# ---------------------------------------------------------------- HammingIndex never writes what it cannot read


def test_index_refuses_ids_it_could_not_save(world):
    for bad_ids in ([{"a": 1}, 2], [1.5, 2.5], [True, False], [2**70, 1]):
        with pytest.raises(DataError, match="ids"):
            HammingIndex(world.codes[:2], bad_ids, 16)
    with pytest.raises(DataError, match="uint8"):
        HammingIndex(world.codes[:2].astype(np.float32), [1, 2], 16)


def test_index_save_is_atomic_and_round_trips(world, tmp_path):
    index = HammingIndex(world.codes, world.ids, 16, {"model": "m"})
    path = index.save(tmp_path / "idx.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx.json", "idx.npz"]  # no temporary left
    again = HammingIndex.load(path)
    np.testing.assert_array_equal(again.codes, index.codes)
    np.testing.assert_array_equal(again.ids, index.ids)
    assert again.bits == 16 and again.meta == {"model": "m"}
    again.save(path)  # saving a loaded index again keeps its sidecar consistent
    assert json.loads(path.with_suffix(".json").read_text()) == {"model": "m", "bits": 16, "size": len(index)}
    with pytest.raises(DataError, match="json"):
        index.save(tmp_path / "idx.json")



def test_a_killed_saves_temporaries_are_removed_by_the_next_save(tmp_path):
    """Reliability review t4, R7: a SIGKILLed `train --local` or index save left `.X.tmp-PID-*` for good (only
    folders were cleaned, and only by prepare). A later save beside it removes a dead process's files and folders."""
    import subprocess
    import sys

    from corrhash.atomic import atomic_write_text, sibling_temp_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    (tmp_path / f".idx.json.tmp-{pid}-ab12").write_text("half")
    (tmp_path / f".out.tmp-{pid}-xyz").mkdir()
    (tmp_path / f".out.tmp-{os.getpid()}-live").mkdir()  # a live process's: kept
    atomic_write_text(tmp_path / "idx.json", "{}")
    made = sibling_temp_dir(tmp_path / "out")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".out.tmp-%d-live" % os.getpid(), made.name, "idx.json"]), left
