"""prepare_data 20ng --release 18828: the 18828 release the paper used, rebuilt from the bydate archive.

A tiny bydate-like tar built here (three groups, with a repost, a cross-post and a post that differs from another
only in a dropped header) checks the rule post by post; one check reads the team's real archive."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from corrhash.data import TfidfFeaturizer, TfidfRecipe, TfidfShards
from corrhash.data.prepare import PrepareConfig, prepare
from corrhash.data.readers import ng20
from corrhash.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
LOOSE = TfidfRecipe(min_df=1, max_df=1.0, min_tokens=3)
WORDS = {
    "sci.space": "orbit rocket launch moon shuttle nasa satellite planet".split(),
    "rec.sport.hockey": "hockey goal team season player coach playoff league".split(),
    "sci.crypt": "key encryption cipher secure privacy chip escrow algorithm".split(),
}


def post(author: str, subject: str, body: str, organization: str = "Some University") -> str:
    return (f"From: {author}\nSubject: {subject}\nOrganization: {organization}\nLines: {body.count(chr(10)) + 1}\n"
            f"NNTP-Posting-Host: news.example.edu\n\n{body}\n")


def bydate_posts() -> dict[tuple[str, str, str], str]:
    """{(split, group, article): text}: 8 train and 4 test posts per group, all distinct, then three duplicates
    that the 18828 release does not have."""
    rng = np.random.default_rng(0)
    posts = {}
    for group, words in WORDS.items():
        for i in range(12):
            split = "train" if i < 8 else "test"
            body = " ".join(rng.choice(words, size=10)) + f"\n> quoted reply line {i}\n-- \nsignature {group} {i}"
            posts[(split, group, str(1000 + i))] = post(f"user{i}@{group}.example", f"{group} topic {i}", body)
    original = posts[("train", "sci.space", "1003")]
    # A repost a week later, in the test half, differing only in its dropped headers and trailing blanks.
    posts[("test", "sci.space", "1100")] = original.replace("Lines:", "Lines: ").replace(
        "Some University", "Another Organization").rstrip("\n") + "  \n\n"
    # A cross-post: the same From:, Subject: and body in sci.crypt, whose name sorts first; it stays there.
    posts[("train", "sci.space", "1101")] = posts[("train", "sci.crypt", "1005")]
    # The same words with another Subject: line is a different post.
    posts[("train", "sci.space", "1102")] = original.replace("Subject: sci.space topic 3", "Subject: Re: orbits")
    return posts


def write_tar(path: Path, posts: dict[tuple[str, str, str], str]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for (split, group, article), text in sorted(posts.items()):
            data = text.encode("latin-1")
            info = tarfile.TarInfo(f"20news-bydate-{split}/{group}/{article}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tiny_bydate(tmp_path, monkeypatch) -> Path:
    """The tiny archive, with the completeness check told its post counts (the real ones are 11,314 + 7,532)."""
    posts = bydate_posts()
    counts = {group: tuple(sum(1 for s, g, _ in posts if g == group and s == split) for split in ("train", "test"))
              for group in WORDS}
    monkeypatch.setattr(ng20, "NG20_BYDATE_POSTS", counts)
    return write_tar(tmp_path / "20news-bydate.tar.gz", posts)


def test_18828_text_keeps_from_and_subject_and_the_whole_body():
    text = post("a@b.c (A B)", "Re: orbits", "body line\n> quoted\n-- \nsig")
    expected = "From: a@b.c (A B)\nSubject: Re: orbits\n\nbody line\n> quoted\n-- \nsig\n"
    assert ng20.release_18828_text(text) == expected
    # A header line that only mentions From: elsewhere is not a From: line; the first From: wins.
    assert ng20.release_18828_text("X-From: x\nFrom: y\nFrom: z\nSubject: s\n\nb") == "From: y\nSubject: s\n\nb"


def test_reader_drops_reposts_and_cross_posts_and_keeps_bydate_ids(tiny_bydate):
    bydate = ng20.read_20ng(tiny_bydate)
    paper = ng20.read_20ng(tiny_bydate, release="18828")
    assert (bydate.name, paper.name) == ("20ng", "20ng-18828")
    assert len(bydate.documents) == 39 and len(paper.documents) == 37
    assert paper.notes == {"release": "18828", "posts": 37, "duplicates_dropped": {"sci.space": 2}}
    assert paper.label_names == bydate.label_names == sorted(WORDS)
    by_id = {doc.doc_id: doc for doc in bydate.documents}
    kept = {doc.doc_id for doc in paper.documents}
    # The dropped two: the test repost (its train original stays) and the sci.space copy of the cross-post.
    dropped = {(by_id[i].split, by_id[i].labels[0]) for i in set(by_id) - kept}
    assert dropped == {("test", "sci.space"), ("train", "sci.space")}
    for doc in paper.documents:  # same id, split and label as in bydate: only the text changes
        assert (doc.split, doc.labels) == (by_id[doc.doc_id].split, by_id[doc.doc_id].labels)
        assert doc.text.startswith("From: user") and "\nSubject: " in doc.text
        assert "Organization:" not in doc.text and "Lines:" not in doc.text
        assert "> quoted reply line" in doc.text and "signature" in doc.text  # the release keeps them
    assert not any("From:" in doc.text or "quoted reply" in doc.text for doc in bydate.documents)
    assert sum("Subject: Re: orbits" in doc.text for doc in paper.documents) == 1


def test_prepare_names_the_release_in_the_manifest(tiny_bydate, tmp_path):
    paper = prepare(PrepareConfig(dataset="20ng", raw=tiny_bydate, out=tmp_path / "paper", release="18828",
                                  recipe=LOOSE))
    bydate = prepare(PrepareConfig(dataset="20ng", raw=tiny_bydate, out=tmp_path / "bydate", recipe=LOOSE))
    assert (paper["dataset"], paper["recipe"]["release"]) == ("20ng-18828", "18828")
    assert (bydate["dataset"], bydate["recipe"]["release"]) == ("20ng", "bydate")
    assert paper["notes"]["duplicates_dropped"] == {"sci.space": 2}
    assert paper["content_hash"] != bydate["content_hash"]
    counts = {split: value["documents"] for split, value in paper["splits"].items()}
    assert counts == {"train": 25, "val": 6, "test": 6}  # 26 train less the cross-post; 13 test less the repost
    shards = TfidfShards(tmp_path / "paper")
    assert shards.manifest["dataset"] == "20ng-18828"
    assert {"subject", "user3"} <= set(TfidfFeaturizer.load(tmp_path / "paper" / "vocab.json").terms)


def test_release_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"--release 18828 applies to 20ng only, not reuters"):
        prepare(PrepareConfig(dataset="reuters", raw=tmp_path, out=tmp_path / "o", release="18828"))
    with pytest.raises(ConfigError, match=r"--release '19997': choose one of bydate, 18828"):
        prepare(PrepareConfig(dataset="20ng", raw=tmp_path, out=tmp_path / "o", release="19997"))


def test_cli_offers_the_release(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "platform"))
    help_text = subprocess.run([sys.executable, "jobs/prepare_data.py", "--help"], cwd=REPO, env=env,
                               capture_output=True, text=True, check=True).stdout
    assert "--release {bydate,18828}" in help_text and "--release 18828" in help_text
    done = subprocess.run([sys.executable, "jobs/prepare_data.py", "20ng", "--release", "19997", "--out",
                           str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "19997" in done.stderr


def test_real_archive_gives_the_18828_release(raw_dir):
    paper = ng20.read_20ng(raw_dir / "20news-bydate" / "20news-bydate.tar.xz", release="18828")
    assert paper.notes["posts"] == len(paper.documents) == 18_825
    assert paper.notes["duplicates_dropped"] == {
        "comp.os.ms-windows.misc": 4, "comp.sys.mac.hardware": 1, "comp.windows.x": 8, "misc.forsale": 3,
        "rec.motorcycles": 2, "sci.electronics": 3}
    splits = [doc.split for doc in paper.documents]
    assert (splits.count("train"), splits.count("test")) == (11_300, 7_525)  # 14 train and 7 test posts dropped
    assert all(doc.text.startswith("From: ") for doc in paper.documents)
