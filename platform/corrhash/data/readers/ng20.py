"""20 Newsgroups: the bydate archive (.tar.gz/.tar.xz) or its extracted folder, checked complete, as it is (its
boilerplate stripped) or as the 18828 release that semantic-hashing papers use, rebuilt from it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from corrhash.data import files
from corrhash.data.readers import Document, RawCorpus, decode
from corrhash.errors import ConfigError, DataError
from corrhash.log import log

_QUOTE_LINE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


def strip_newsgroup_header(text: str) -> str:
    """Everything before the first blank line is the header (From:, Subject:, Lines: ...)."""
    return text.partition("\n\n")[2]


def strip_newsgroup_quoting(text: str) -> str:
    """Drop quoted replies and their attribution lines."""
    return "\n".join(line for line in text.split("\n") if not _QUOTE_LINE.search(line))


def strip_newsgroup_footer(text: str) -> str:
    """Drop a signature block: everything after the last line made only of dashes or blanks."""
    lines = text.strip().split("\n")
    for line_num in range(len(lines) - 1, -1, -1):
        if lines[line_num].strip().strip("-") == "":
            break
    return "\n".join(lines[:line_num]) if line_num > 0 else text


NG20_RELEASES = ("bydate", "18828")
"""The 20 Newsgroups releases `read_20ng` gives: the bydate archive as it is (18,846 posts), or the 18828 release
that semantic-hashing papers (VDSH, NASH, BMSH, CorrSH) use, rebuilt from bydate."""

_KEPT_HEADER = re.compile(r"(From|Subject):")


def release_18828_text(text: str) -> str:
    """A bydate post as the 18828 release has it: only its From: and Subject: header lines (bydate keeps
    Organization:, Lines:, NNTP-Posting-Host: ... too), then the body untouched."""
    header, _, body = text.partition("\n\n")
    kept = {}
    for line in header.split("\n"):
        match = _KEPT_HEADER.match(line)
        if match and match.group(1) not in kept:
            kept[match.group(1)] = line
    return "".join(kept[name] + "\n" for name in ("From", "Subject") if name in kept) + "\n" + body


def to_18828(documents: list[Document]) -> tuple[list[Document], dict[str, int]]:
    """The 18828 release from bydate posts: each text cut to From:, Subject: and body, and duplicates dropped.

    bydate (18,846 posts) still holds posts that are the same From:, Subject: and body once the other headers are
    gone: reposts a few days apart in one group, and cross-posts to two groups. The 18828 release has none. Two
    posts are duplicates when those three match with runs of whitespace made equal (reposts differ in
    trailing blanks); the first in (group, train before test, article number) order stays, so a repost keeps
    its earlier, train copy and a cross-post stays in the group whose name sorts first. Kept posts keep their
    bydate doc_id and split. Returns (kept documents in input order, {group: posts dropped}).

    On the published bydate archive this drops 21 posts and keeps 18,825, three fewer than the release's 18,828
    posts: the release was cut from the original 19,997 posts, not from bydate, so bydate alone cannot give it
    post for post. Exact matching (no whitespace rule) drops only 9; this rule was the closest of those tried."""
    rank = {id(doc): i for i, doc in enumerate(documents)}

    def order(doc: Document) -> tuple:
        return doc.labels[0], doc.split != "train", rank[id(doc)]

    seen: set[str] = set()
    dropped: dict[str, int] = {}
    drop: set[int] = set()
    for doc in sorted(documents, key=order):
        doc.text = release_18828_text(doc.text)
        key = " ".join(doc.text.split())
        if key in seen:
            drop.add(id(doc))
            dropped[doc.labels[0]] = dropped.get(doc.labels[0], 0) + 1
        seen.add(key)
    return [doc for doc in documents if id(doc) not in drop], dict(sorted(dropped.items()))


_NG_PATH = re.compile(r"(?:^|/)20news-bydate-(train|test)/([^/]+)/([^/]+)$")

NG20_BYDATE_POSTS = {  # group: (train, test) posts in the published 20news-bydate archive
    "alt.atheism": (480, 319), "comp.graphics": (584, 389), "comp.os.ms-windows.misc": (591, 394),
    "comp.sys.ibm.pc.hardware": (590, 392), "comp.sys.mac.hardware": (578, 385), "comp.windows.x": (593, 395),
    "misc.forsale": (585, 390), "rec.autos": (594, 396), "rec.motorcycles": (598, 398),
    "rec.sport.baseball": (597, 397), "rec.sport.hockey": (600, 399), "sci.crypt": (595, 396),
    "sci.electronics": (591, 393), "sci.med": (594, 396), "sci.space": (593, 394),
    "soc.religion.christian": (599, 398), "talk.politics.guns": (546, 364), "talk.politics.mideast": (564, 376),
    "talk.politics.misc": (465, 310), "talk.religion.misc": (377, 251),
}


def check_20ng_complete(raw: Path, posts: Counter) -> None:
    """Refuse anything but the published archive's 11,314 + 7,532 posts. tarfile reads an archive cut at
    a member boundary as a complete, shorter one, so counting is the only way to notice."""
    differences = []
    for index, split in enumerate(("train", "test")):
        expected = {group: pair[index] for group, pair in NG20_BYDATE_POSTS.items()}
        found = {group: posts.get((split, group), 0) for group in expected}
        if not any(found.values()):
            differences.insert(0, f"20news-bydate-{split}/ absent (0 of {sum(expected.values()):,})")
            continue
        absent = [group for group in expected if found[group] == 0]
        if absent:
            differences.append(f"{split}: {len(absent)} of 20 groups absent ({', '.join(absent[:3])}"
                               f"{', …' if len(absent) > 3 else ''})")
        differences += [f"{split}/{group} {found[group]} of {expected[group]}" for group in expected
                        if 0 < found[group] != expected[group]]
    differences += [f"{split}/{group} is not a bydate newsgroup" for split, group in sorted(posts)
                    if group not in NG20_BYDATE_POSTS]
    if differences:
        shown = ", ".join(differences[:6]) + (f" and {len(differences) - 6} more" if len(differences) > 6 else "")
        expected_total = sum(sum(pair) for pair in NG20_BYDATE_POSTS.values())
        raise DataError(f"{raw}: not the complete 20news-bydate archive ({sum(posts.values()):,} of "
                        f"{expected_total:,} posts; {shown}); the file may be cut short: fetch it again")


def read_20ng(raw: Path, keep_boilerplate: bool = False, encoding: str = "latin-1",
              release: str = "bydate") -> RawCorpus:
    """The bydate archive (.tar.gz/.tar.xz) or its extracted folder, checked complete; `release` "18828" turns it
    into the 18828 release (see `to_18828`), which keeps its text whole whatever `keep_boilerplate` says."""
    if release not in NG20_RELEASES:
        raise ConfigError(f"--release {release!r}: choose one of {', '.join(NG20_RELEASES)}")
    found: list[tuple[str, str, str, bytes]] = []
    for rel, data in files.iter_archive_or_folder(raw, lambda name: _NG_PATH.search(name) is not None):
        split, group, article = _NG_PATH.search(rel).groups()
        found.append((split, group, article, data))
        if len(found) % 5000 == 0:
            log(f"20ng: read {len(found)} posts from {raw.name}")
    if not found:
        raise DataError(f"{raw}: no 20news-bydate-train/ or 20news-bydate-test/ posts inside")
    check_20ng_complete(raw, Counter((split, group) for split, group, _, _ in found))
    # Article numbers repeat across groups: key by (split, group, article).
    found.sort(key=lambda item: (item[0] != "train", item[1], int(item[2]) if item[2].isdigit() else 0, item[2]))
    groups = sorted({group for _, group, _, _ in found})
    documents = []
    for doc_id, (split, group, article, data) in enumerate(found):
        text = decode(data, encoding, f"{raw}: 20news-bydate-{split}/{group}/{article}")
        if release == "bydate" and not keep_boilerplate:
            text = strip_newsgroup_footer(strip_newsgroup_quoting(strip_newsgroup_header(text)))
        documents.append(Document(doc_id, text, [group], split))
    if release == "18828":
        documents, dropped = to_18828(documents)
        log(f"20ng: 18828 release: {len(documents)} posts in {len(groups)} groups after dropping "
            f"{sum(dropped.values())} duplicates")
        return RawCorpus("20ng-18828", documents, groups, [raw],
                         {"release": "18828", "posts": len(documents), "duplicates_dropped": dropped})
    log(f"20ng: {len(documents)} posts in {len(groups)} groups")
    return RawCorpus("20ng", documents, groups, [raw])

