"""A user's own corpora (ecosystem review t4, N4): each prepared text corpus has its own name, so its tunes register
their own model and champion (corrhash-NAME-BITSb, or --registered-model), and a model is not used on a corpus
prepared with another vocabulary unless the user says so."""

from __future__ import annotations

import pytest

from badinput import assert_named_error, run_job, tiny_model
from services import drive
from corrhash.data import TfidfShards
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.retrieval.index import HammingIndex
from corrhash.tracking.registry import registered_name
from test_data_files import LOOSE, synthetic_rows, write_jsonl


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """Two text corpora prepared by the same command but for their --out (other documents, other vocabularies),
    and a 16-bit model trained on the first."""
    root = tmp_path_factory.mktemp("own")
    news = write_jsonl(root / "news.jsonl", synthetic_rows(120))
    # The same documents with every word respelled: as many terms, none the same.
    mails = write_jsonl(root / "mails.jsonl", [{**row, "text": " ".join(word + "q" for word in row["text"].split())}
                                               for row in synthetic_rows(120)])
    prepare(PrepareConfig(dataset="text", raw=news, out=root / "news", recipe=LOOSE))
    prepare(PrepareConfig(dataset="text", raw=mails, out=root / "mail-2026", recipe=LOOSE))
    return root, tiny_model(root / "news", root / "model", epochs=1)


def test_a_text_corpus_is_named_for_its_folder_and_registers_under_that_name(two_corpora, tmp_path):
    root, _ = two_corpora
    names = {folder: TfidfShards(root / folder).manifest for folder in ("news", "mail-2026")}
    assert names["news"]["dataset"] == "news" and names["mail-2026"]["dataset"] == "mail-2026"
    assert all(manifest["kind"] == "text" for manifest in names.values())
    assert registered_name("news", 64) == "corrhash-news-64b" != registered_name("mail-2026", 64)
    manifest = prepare(PrepareConfig(dataset="text", raw=root / "news.jsonl", out=tmp_path / "x", name="press",
                                     recipe=LOOSE))
    assert manifest["dataset"] == "press" and "name" not in manifest["recipe"]
    assert manifest["content_hash"] == names["news"]["content_hash"]  # the name is not the data


def test_a_bad_dataset_name_is_a_named_error(two_corpora, tmp_path, capsys):
    root, _ = two_corpora
    raw = str(root / "news.jsonl")
    assert_named_error(*run_job("prepare_data", ["text", "--raw", raw, "--out", tmp_path / "a", "--name", "my corpus"],
                                capsys), "--name 'my corpus'")
    assert_named_error(*run_job("prepare_data", ["text", "--raw", raw, "--out", tmp_path / "my docs"], capsys),
                       "'my docs'", "--name")
    assert not (tmp_path / "a").exists() and not (tmp_path / "my docs").exists()
    assert_named_error(*run_job("tune", ["--data", root / "news", "--registered-model", "a/b"], capsys),
                       "--registered-model 'a/b'")


def test_a_model_is_refused_on_shards_of_another_vocabulary(two_corpora, tmp_path, capsys):
    root, model = two_corpora
    args = ["--model", model, "--corpus", root / "mail-2026", "--index-kind", "flat", "--index-out", tmp_path / "i.npz"]
    assert_named_error(*run_job("search", args, capsys), str(root / "mail-2026"), "another vocabulary",
                       "--allow-other-model")
    assert not (tmp_path / "i.npz").exists()
    status, stderr = run_job("search", [*args, "--allow-other-model"], capsys)
    assert status == 0 and "warning:" in stderr and "hashing it anyway" in stderr
    assert len(HammingIndex.load(tmp_path / "i.npz")) == TfidfShards(root / "mail-2026").manifest["splits"]["train"][
        "documents"]
    status, stderr = run_job("search", ["--model", model, "--corpus", root / "news", "--index-kind", "flat"], capsys)
    assert status == 0 and "another vocabulary" not in stderr  # its own corpus


@pytest.mark.cluster
def test_a_second_corpus_tuned_by_name_gets_its_own_registered_model_and_champion(cluster, two_corpora, tmp_path):
    """The README's tune command on two of a user's corpora: each registers its own model (corrhash-NAME-BITSb) and
    holds its own @champion, where every text corpus used to share corrhash-text-BITSb and the second never won."""
    from mlflow.tracking import MlflowClient

    root, _ = two_corpora
    client = MlflowClient(cluster["mlflow"])
    for folder in ("news", "mail-2026"):
        done = drive(cluster, ["--data", str(root / folder), "--bits", "8", "--hidden", "16", "--epochs", "2",
                               "--num-samples", "1", "--grace-period", "1", "--eval-k", "10", "--name", f"own-{folder}",
                               "--storage", str(tmp_path / "tune")], job="jobs/tune.py")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"corrhash-{folder}-8b" in done.stdout + done.stderr
    for folder in ("news", "mail-2026"):
        champion = client.get_model_version_by_alias(f"corrhash-{folder}-8b", "champion")
        assert champion.tags["data.content_hash"] == TfidfShards(root / folder).content_hash
