"""The reliability review's prepare_data cases (R11 table, R2, R3 data side, R4, the cut tar).

Every bad input exits 2 with `error: …` naming the file, row or option, leaves no output and no
temporary folder, and never changes the input. Damaged shard folders fail by name when opened.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io

from badinput import assert_named_error, run_job, tree
from corrhash.data import TfidfRecipe, TfidfShards
from corrhash.data.files import sha256_file
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.data.shards import manifest_checksum
from corrhash.errors import DataError

REPO = Path(__file__).resolve().parents[1]
WORDS = {"space": "orbit rocket launch moon shuttle nasa satellite planet".split(),
         "sport": "hockey goal team season player coach playoff score".split()}


def rows(n: int = 40) -> list[dict]:
    rng = np.random.default_rng(0)
    topics = sorted(WORDS)
    return [{"id": i, "text": " ".join(rng.choice(WORDS[topics[i % 2]], size=10)), "labels": [topics[i % 2]]}
            for i in range(n)]


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


LOOSE = ["--min-df", "1", "--max-df", "1.0"]


def text_case(records: list[dict], extra: list[str], names: list[str]) -> callable:
    def build(inputs: Path, out: Path, monkeypatch):
        return ["text", "--raw", jsonl(inputs / "docs.jsonl", records), "--out", out, *LOOSE, *extra], names
    return build


def with_row(index: int, **changes) -> list[dict]:
    records = rows()
    records[index].update(changes)
    return records


# ---------------------------------------------------------------- cases: (builder, names in the message)

def latin1_bytes_in_utf8(inputs, out, monkeypatch):
    path = jsonl(inputs / "docs.jsonl", rows())
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"orbit", b"caf\xe9", 1).replace(b"hockey", b"caf\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    return ["text", "--raw", path, "--out", out, *LOOSE], ["docs.jsonl", "line 3", "--encoding"]


def empty_mat(inputs, out, monkeypatch):
    (inputs / "empty.mat").write_bytes(b"")
    return ["mat", "--raw", inputs / "empty.mat", "--out", out], ["empty.mat"]


def mat_with(train, named: str = "'train'") -> callable:
    def build(inputs, out, monkeypatch):
        parts = {key: np.eye(4) for key in ("cv", "test", "gnd_train", "gnd_cv", "gnd_test")}
        scipy.io.savemat(str(inputs / "odd.mat"), dict(parts, train=train))
        return ["mat", "--raw", inputs / "odd.mat", "--out", out], ["odd.mat", named]
    return build


def out_under_a_file(inputs, out, monkeypatch):
    raw = jsonl(inputs / "docs.jsonl", rows())
    (inputs / "afile").write_text("not a folder")
    return ["text", "--raw", raw, "--out", inputs / "afile" / "data", *LOOSE], ["afile", "--out"]


def read_only_location(inputs, out, monkeypatch):
    """Root ignores permission bits, so the file system's EROFS is simulated where the folder is made."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    raw = jsonl(inputs / "docs.jsonl", rows())
    return ["text", "--raw", raw, "--out", out, *LOOSE], [out, "--out", "Read-only file system"]


def disk_full(inputs, out, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("corrhash.data.shards.pq.write_table", full)
    raw = jsonl(inputs / "docs.jsonl", rows())
    return ["text", "--raw", raw, "--out", out, *LOOSE], [out, "No space left on device"]


def overwrite_folder_holding_raw(inputs, out, monkeypatch):
    notes = inputs / "notes"
    notes.mkdir()
    raw = jsonl(notes / "corpus.jsonl", rows())
    return ["text", "--raw", raw, "--out", notes, "--overwrite", *LOOSE], [notes, "raw input"]


def overwrite_foreign_folder(inputs, out, monkeypatch):
    folder = inputs / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("years of work")
    (folder / "sub" / "data.csv").write_text("1,2\n")
    raw = jsonl(inputs / "docs.jsonl", rows())
    return ["text", "--raw", raw, "--out", folder, "--overwrite", *LOOSE], [folder, "not a prepared corpus"]


def overwrite_a_file(inputs, out, monkeypatch):
    (inputs / "result").write_text("a file")
    raw = jsonl(inputs / "docs.jsonl", rows())
    return ["text", "--raw", raw, "--out", inputs / "result", "--overwrite", *LOOSE], ["result", "not a folder"]


def out_inside_raw_folder(inputs, out, monkeypatch):
    (inputs / "tmc").mkdir()
    (inputs / "tmc" / "TestData.txt").write_text("1~words\n")
    return ["tmc", "--raw", inputs / "tmc", "--out", inputs / "tmc" / "prepared"], ["prepared", "raw input"]


def cut_20ng_tar(inputs, out, monkeypatch):
    """A bydate-layout tar holding only a few posts: what a tar cut at a member boundary reads as."""
    path = inputs / "20news-bydate-cut.tar"
    with tarfile.open(path, "w") as archive:
        for i, group in enumerate(("alt.atheism", "sci.space", "alt.atheism")):
            data = f"From: x\nSubject: y\n\npost {i} about {group}\n".encode()
            info = tarfile.TarInfo(f"20news-bydate-train/{group}/{5000 + i}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    names = [path, "3 of 18,846 posts", "20news-bydate-test/ absent", "train: 18 of 20 groups absent",
             "alt.atheism 2 of 480"]
    return ["20ng", "--raw", path, "--out", out, "--limit", "300"], names


def short_reuters(inputs, out, monkeypatch):
    folder = inputs / "reuters21578"
    folder.mkdir()
    doc = '<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" NEWID="{}"><TOPICS><D>earn</D></TOPICS>' \
          "<TEXT><BODY>profit rose</BODY></TEXT></REUTERS>\n"
    (folder / "reut2-000.sgm").write_text("".join(doc.format(i) for i in range(1, 4)))
    return ["reuters", "--raw", folder, "--out", out], [folder, "reut2-000.sgm has 3 of 1000",
                                                             "reut2-001.sgm missing"]


def swapped_download(inputs, out, monkeypatch):
    fake = inputs / "20news-bydate.tar.gz"
    fake.write_bytes(b"not the archive you are looking for")
    monkeypatch.delenv("CORRHASH_RAW_DIR", raising=False)
    monkeypatch.setenv("CORRHASH_CACHE", str(inputs / "cache"))
    monkeypatch.setenv("CORRHASH_20NG_URL", fake.as_uri())
    return ["20ng", "--out", out], [fake.as_uri(), "sha256", "nothing was kept"]


CASES = {
    # R2: UTF-8 by default, a named error for other bytes, and a checked --encoding
    "R2 latin-1 bytes in a UTF-8 file": latin1_bytes_in_utf8,
    "R2 unknown --encoding": text_case(rows(), ["--encoding", "klingon"], ["--encoding", "klingon"]),
    "R2 --encoding utf-16 (not ASCII-compatible)": text_case(rows(), ["--encoding", "utf-16"], ["--encoding"]),
    # R11 table
    "R11 id >= 2**63": text_case(with_row(4, id=2**63), [], ["docs.jsonl, row 5", "'id'", "64-bit"]),
    "R11 id 1.5": text_case(with_row(4, id=1.5), [], ["docs.jsonl, row 5", "'id'", "1.5"]),
    "R11 id true": text_case(with_row(4, id=True), [], ["docs.jsonl, row 5", "'id'", "True"]),
    "R11 --label-delimiter ''": text_case(rows(), ["--label-delimiter", ""], ["--label-delimiter"]),
    "R11 --seed -1": text_case(rows(), ["--seed", "-1"], ["--seed"]),
    "R11 0-byte .mat": empty_mat,
    "R11 .mat train is a cell array": mat_with(np.array([[np.eye(2), np.eye(3)]], dtype=object)),
    "R11 .mat train is a char array": mat_with(np.array(["abc", "def"])),
    ".mat train holds NaN": mat_with(np.diag([1.0, 2.0, np.nan, 1.0]), "train, row 3: value nan"),
    "R11 --out under a file": out_under_a_file,
    "R11 --out on a read-only file system": read_only_location,
    "R11 disk full during the write": disk_full,
    "R11 20ng tar cut at a member boundary": cut_20ng_tar,
    "R11 Reuters with files missing": short_reuters,
    # R4: --overwrite replaces only a prepared corpus, never the input
    "R4 --overwrite of the folder holding --raw": overwrite_folder_holding_raw,
    "R4 --overwrite of a foreign folder": overwrite_foreign_folder,
    "R4 --overwrite of a file": overwrite_a_file,
    "R4 --out inside the raw folder": out_inside_raw_folder,
    # S6: the download is pinned
    "S6 download with the wrong sha256": swapped_download,
}


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_named_exit_2(case, tmp_path, capsys, monkeypatch):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    argv, names = CASES[case](inputs, out, monkeypatch)
    before = tree(inputs)
    status, stderr = run_job("prepare_data", argv, capsys)
    assert_named_error(status, stderr, *names)
    assert tree(inputs) == before, "the input changed"
    assert not out.exists() and not leftovers(tmp_path)
    assert not (inputs / "cache").exists() or not any((inputs / "cache").iterdir())  # no download kept


def test_cut_real_20ng_tar(raw_dir, tmp_path, capsys):
    """The review's case on the real archive: its first 400 posts as a plain .tar, cut at a member boundary."""
    cut = tmp_path / "20news-bydate-cut.tar"
    with tarfile.open(raw_dir / "20news-bydate" / "20news-bydate.tar.xz") as source, tarfile.open(cut, "w") as target:
        posts = 0
        for member in source:
            target.addfile(member, source.extractfile(member) if member.isfile() else None)
            posts += member.isfile()
            if posts == 400:
                break
    status, stderr = run_job("prepare_data", ["20ng", "--raw", cut, "--out", tmp_path / "out", "--limit", "300"],
                             capsys)
    assert_named_error(status, stderr, cut, "400 of 18,846 posts")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


# ---------------------------------------------------------------- cases that must now work


def test_long_csv_field_is_read_like_any_document(tmp_path, capsys):
    records = rows()
    lines = ["id,text,labels"] + [f'{r["id"]},{r["text"]},{r["labels"][0]}' for r in records]
    lines[3] = "2," + "orbit " * 200_000 + ",space"  # 1.2 MB: over csv's default 128 KiB field limit
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    status, stderr = run_job("prepare_data", ["text", "--raw", tmp_path / "long.csv", "--out", tmp_path / "out",
                                              *LOOSE], capsys)
    assert status == 0, stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(manifest["dropped"]["too_long"].values()) == 1  # counted like the same document in JSONL


def test_integral_ids_are_kept(tmp_path):
    records = rows()
    records[0]["id"], records[1]["id"] = 1007.0, "1012"
    records[2]["id"] = -3
    prepare(PrepareConfig(dataset="text", raw=jsonl(tmp_path / "d.jsonl", records), out=tmp_path / "out",
                          recipe=TfidfRecipe(min_df=1, max_df=1.0)))
    shards = TfidfShards(tmp_path / "out")
    ids = np.concatenate([shards.split(s).doc_ids for s in ("train", "val", "test")])
    assert {1007, 1012, -3} <= set(ids.tolist())


def test_overwrite_replaces_a_prepared_corpus_and_cleans_stale_temporaries(tmp_path, capsys):
    raw = jsonl(tmp_path / "docs.jsonl", rows())
    out = tmp_path / "out"
    assert run_job("prepare_data", ["text", "--raw", raw, "--out", out, *LOOSE], capsys)[0] == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".out.tmp-{dead.pid}-abc", tmp_path / f".out.old-{dead.pid}"]
    live = tmp_path / f".out.tmp-{os.getpid()}-xyz"  # a run still going (this process): kept
    for folder in (*stale, live):
        (folder / "train").mkdir(parents=True)
    status, stderr = run_job("prepare_data", ["text", "--raw", raw, "--out", out, "--seed", "3", "--overwrite",
                                              *LOOSE], capsys)
    assert status == 0, stderr
    assert json.loads((out / "manifest.json").read_text())["recipe"]["seed"] == 3
    assert leftovers(tmp_path) == [live]


def test_sigterm_during_the_write_leaves_the_old_output_and_no_temporary(tmp_path, capsys, monkeypatch):
    raw = jsonl(tmp_path / "docs.jsonl", rows())
    out = tmp_path / "out"
    prepare(PrepareConfig(dataset="text", raw=raw, out=out, recipe=TfidfRecipe(min_df=1, max_df=1.0)))
    before = tree(out)

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises before this returns
        raise AssertionError("SIGTERM did not stop the write")
    monkeypatch.setattr("corrhash.data.shards.pq.write_table", killed)
    handler_before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's if an earlier test started Ray here
    status, _ = run_job("prepare_data", ["text", "--raw", raw, "--out", out, "--overwrite", *LOOSE], capsys)
    assert status == 128 + signal.SIGTERM
    assert tree(out) == before and not leftovers(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the job's handler is gone again


def test_sigterm_to_the_job_process(tmp_path):
    """`kill` (or `ray job stop`) on a real prepare_data process while it writes many small shards."""
    raw = jsonl(tmp_path / "docs.jsonl", rows(3000))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO / "platform"))
    process = subprocess.Popen([sys.executable, "jobs/prepare_data.py", "text", "--raw", str(raw), "--out", str(out),
                                "--rows-per-shard", "1", *LOOSE], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.tmp-*/train/part-00010.parquet")) and process.poll() is None:
        assert time.monotonic() < deadline, "the write never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert not out.exists() and not leftovers(tmp_path)


# ---------------------------------------------------------------- R3, data side: damaged shard folders


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "good"
    prepare(PrepareConfig(dataset="text", raw=jsonl(tmp_path_factory.mktemp("raw") / "d.jsonl", rows(60)), out=out,
                          recipe=TfidfRecipe(min_df=1, max_df=1.0), rows_per_shard=20))
    return out


SHARD = "train/part-00000.parquet"


def edit_manifest(root: Path, change, reseal: bool) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    if reseal:
        manifest["manifest_sha256"] = manifest_checksum(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def rewrite_shard(root: Path, change) -> None:
    """Rewrite the first train shard with `change(columns)` applied to its numpy arrays, then record the new
    file's sha256 as a careless writer would: only the row checks can catch what is wrong inside."""
    table = pq.read_table(root / SHARD)
    columns = {"doc_id": table.column("doc_id").to_numpy()}
    for name in ("indices", "values", "labels"):
        array = table.column(name).combine_chunks()
        columns[name] = [np.asarray(array.offsets).copy(), np.asarray(array.flatten()).copy()]
    change(columns)
    arrays = [pa.array(columns["doc_id"])] + [pa.ListArray.from_arrays(pa.array(off), pa.array(flat))
                                              for off, flat in (columns[n] for n in ("indices", "values", "labels"))]
    pq.write_table(pa.Table.from_arrays(arrays, schema=table.schema), root / SHARD)

    def record(manifest):
        for entry in manifest["splits"]["train"]["shards"]:
            if entry["path"] == SHARD:
                entry["sha256"], entry["rows"] = sha256_file(root / SHARD), len(columns["doc_id"])
    edit_manifest(root, record, reseal=True)


def flip_bytes(root):
    data = bytearray((root / SHARD).read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    (root / SHARD).write_bytes(bytes(data))


def set_value(row: int, value: float):
    def change(columns):
        offsets, values = columns["values"]
        values[offsets[row - 1]] = value
    return lambda root: rewrite_shard(root, change)


def shift_value_offsets(root):
    def change(columns):
        columns["values"][0][3] += 1  # row 3 claims one value more than it has indices (row 4 one fewer)
    rewrite_shard(root, change)


def set_index(column: str, value: int):
    def change(columns):
        columns[column][1][columns[column][0][3]] = value  # first entry of row 4
    return lambda root: rewrite_shard(root, change)


def legacy(manifest):
    """A manifest as written before per-shard checksums."""
    for name in ("manifest_sha256", "vocab_sha256", "encoding"):
        manifest.pop(name)
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            entry.pop("sha256")


def legacy_tampered(manifest):
    legacy(manifest)
    manifest["content_hash"] = "0" * 64


DAMAGE = {
    "64 bytes flipped in a shard": (flip_bytes, [SHARD, "sha256 does not match"]),
    "content_hash zeroed": (lambda r: edit_manifest(r, lambda m: m.update(content_hash="0" * 64), reseal=False),
                            ["manifest.json", "checksum does not match"]),
    "n_features raised, manifest checksum kept": (
        lambda r: edit_manifest(r, lambda m: m.update(n_features=100000), reseal=False), ["manifest.json", "checksum"]),
    "n_features raised and resealed": (
        lambda r: edit_manifest(r, lambda m: m.update(n_features=100000), reseal=True),
        ["n_features 100000 disagrees with", "vocab.json"]),
    "NaN value": (set_value(5, np.nan), [SHARD + ", row 5", "nan"]),
    "inf value": (set_value(2, np.inf), [SHARD + ", row 2", "inf"]),
    "negative value": (set_value(7, -0.5), [SHARD + ", row 7", "-0.5"]),
    "huge finite value (a flipped byte)": (set_value(3, 3.2e38), [SHARD + ", row 3", "L2 norm"]),
    "all values zero": (lambda r: rewrite_shard(r, lambda c: c["values"][1].fill(0)), [SHARD + ", row 1", "L2 norm 0"]),
    "values offsets shifted by one": (shift_value_offsets, [SHARD + ", row 3", "indices but"]),
    "feature index out of range": (set_index("indices", 10**6), [SHARD + ", row 4", "feature index 1000000"]),
    "label index out of range": (set_index("labels", 9), [SHARD + ", row 4", "label index 9"]),
    "empty train split": (lambda r: edit_manifest(r, lambda m: m["splits"]["train"].update(shards=[]), reseal=True),
                          ["manifest.json", "split 'train' has no documents"]),
    "legacy manifest, content_hash tampered": (lambda r: edit_manifest(r, legacy_tampered, reseal=False),
                                               ["manifest.json", "content_hash"]),
    "vocab.json missing": (lambda r: (r / "vocab.json").unlink(), ["vocab.json"]),
    "manifest is a JSON list": (lambda r: (r / "manifest.json").write_text("[]"), ["manifest.json", "format"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_shards_are_refused_by_name(damage, good_shards, tmp_path):
    apply, names = DAMAGE[damage]
    root = tmp_path / "shards"
    shutil.copytree(good_shards, root)
    apply(root)
    with pytest.raises(DataError) as info:
        shards = TfidfShards(root)
        for split in ("train", "val", "test"):
            shards.split(split)
            shards.labels(split)
    for name in names:
        assert str(name) in str(info.value), str(info.value)


def test_legacy_manifest_still_loads(good_shards, tmp_path):
    root = tmp_path / "shards"
    shutil.copytree(good_shards, root)
    edit_manifest(root, legacy, reseal=False)
    old, new = TfidfShards(root).split("train"), TfidfShards(good_shards).split("train")
    assert (old.features != new.features).nnz == 0 and (old.doc_ids == new.doc_ids).all()


def test_verification_opt_out(good_shards, tmp_path, monkeypatch):
    """Without the sha256 checks a changed-but-valid shard loads; the row checks still run."""
    root = tmp_path / "shards"
    shutil.copytree(good_shards, root)
    table = pq.read_table(root / SHARD)
    pq.write_table(table.slice(0, table.num_rows), root / SHARD, compression="snappy")  # same rows, other bytes
    with pytest.raises(DataError, match="sha256 does not match"):
        TfidfShards(root).split("train")
    assert len(TfidfShards(root, verify=False).split("train")) == 48
    monkeypatch.setenv("CORRHASH_VERIFY_SHARDS", "0")
    assert len(TfidfShards(root).split("train")) == 48
    set_value(5, np.nan)(root)
    with pytest.raises(DataError, match="row 5"):
        TfidfShards(root).split("train")
