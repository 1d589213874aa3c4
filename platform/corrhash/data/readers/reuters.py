"""Reuters-21578 (Distribution 1.0, SGML): the ModApte split, checked complete, its N most frequent categories."""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

from corrhash.data import files
from corrhash.data.readers import Document, RawCorpus, decode
from corrhash.errors import DataError
from corrhash.log import log

_REUTERS_DOC = re.compile(r"<REUTERS([^>]*)>(.*?)</REUTERS>", re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_TOPICS = re.compile(r"<TOPICS>(.*?)</TOPICS>", re.S)
_D = re.compile(r"<D>(.*?)</D>", re.S)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.S)
_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)
_TEXT = re.compile(r"<TEXT[^>]*>(.*?)</TEXT>", re.S)
_TAG = re.compile(r"<[^>]+>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean_sgml(fragment: str) -> str:
    return _CONTROL.sub(" ", html.unescape(_TAG.sub(" ", fragment)))


REUTERS_DOCUMENTS = {f"reut2-{i:03d}.sgm": 1000 for i in range(21)} | {"reut2-021.sgm": 578}
"""<REUTERS> documents per file of Reuters-21578 Distribution 1.0 (21,578 in all)."""


def check_reuters_complete(raw: Path, documents: dict[str, int]) -> None:
    """Refuse a distribution with a file missing, cut short or extra (a cut archive reads as a shorter one)."""
    differences = [f"{name} has {documents[name]} of {expected} documents"
                   for name, expected in REUTERS_DOCUMENTS.items() if documents.get(name, expected) != expected]
    differences += [f"{name} missing" for name in REUTERS_DOCUMENTS if name not in documents]
    differences += [f"{name} is not part of it" for name in sorted(documents) if name not in REUTERS_DOCUMENTS]
    if differences:
        shown = ", ".join(differences[:6]) + (f" and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise DataError(f"{raw}: not the complete Reuters-21578 distribution ({sum(documents.values()):,} of "
                        f"21,578 documents in {len(documents)} of 22 reut2-NNN.sgm files; {shown})")


def read_reuters(raw: Path, top_labels: int = 20, encoding: str = "latin-1") -> RawCorpus:
    """Reuters-21578 SGML, ModApte split (LEWISSPLIT TRAIN/TEST with TOPICS="YES"), checked complete."""
    records = []
    documents_per_file: dict[str, int] = {}
    for rel, data in files.iter_archive_or_folder(raw, lambda name: re.search(r"reut2-\d+\.sgm$", name) is not None):
        documents = _REUTERS_DOC.findall(decode(data, encoding, f"{raw}: {rel}"))
        documents_per_file[rel.rsplit("/", 1)[-1]] = len(documents)
        for attrs, body in documents:
            meta = dict(_ATTR.findall(attrs))
            split = meta.get("LEWISSPLIT", "").lower()
            if meta.get("TOPICS") != "YES" or split not in ("train", "test"):
                continue
            topics_block = _TOPICS.search(body)
            topics = _D.findall(topics_block.group(1)) if topics_block else []
            title = _TITLE.search(body)
            main = _BODY.search(body) or _TEXT.search(body)
            text = " ".join(_clean_sgml(m.group(1)) for m in (title, main) if m)
            records.append((int(meta["NEWID"]), split, text, topics))
    if not documents_per_file:
        raise DataError(f"{raw}: no reut2-NNN.sgm files inside")
    check_reuters_complete(raw, documents_per_file)
    records.sort()
    train_counts = Counter(t for _, split, _, topics in records if split == "train" for t in topics)
    ranked = sorted(train_counts, key=lambda t: (-train_counts[t], t))
    kept = ranked[:top_labels] if top_labels > 0 else ranked
    kept_set = set(kept)
    documents = [Document(newid, text, [t for t in topics if t in kept_set], split)
                 for newid, split, text, topics in records]
    log(f"reuters: {len(records)} ModApte documents from {len(documents_per_file)} files; "
        f"keeping {len(kept)} categories")
    return RawCorpus("reuters", documents, sorted(kept), [raw],
                     {"modapte_documents": len(records), "categories_kept": kept})

