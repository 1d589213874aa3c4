"""Documents to index, as jobs/search.py and jobs/serve.py read them: a prepared shard folder, a .jsonl file or
a text file, and the index for a model (loaded from disk or hashed from a corpus) with the checks both make.

--corpus is a prepared shard folder (its split, ids = doc_id), a UTF-8 .jsonl file (a `text` field and an optional
`id`: an integer or a string, the same kind on every line; default: the line's index) or a UTF-8 text file (one
document per line, ids = line numbers). A hit also says what the document is: "labels" for a shard folder, which
keeps no text, and "text" (its first 80 characters) for a .jsonl or text file.

A saved index (--index) keeps what its hits show, as it was hashed from its corpus, and the model that built it:
searched with another model (other weights), or one saved without that record (by corrhash before it kept one),
it is refused with an OtherModelError naming the index, both models and how to rebuild it, unless
allow_other_model (the jobs' --allow-other-model), which warns instead.

An index hashed from a corpus is of the kind asked for (corrhash.retrieval.index: auto, flat or ivf); one that
may become IVF, hashed from a shard folder, has its nprobe calibrated on a sample of the folder's val split.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from corrhash.errors import DataError

INT64 = range(-2**63, 2**63)
ID_KINDS = {int: "an integer", str: "a string"}
SNIPPET_CHARS = 80  # of a hit's text: enough to see what it is about, short enough for one line


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file's contents; a missing file, a folder or binary bytes are named errors."""
    if path.is_dir():
        raise DataError(f"{path}: a folder, expected a {what} file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}, line {line_no}: not UTF-8 text (a binary file?)") from exc
    if "\0" in text:
        line_no = text.count("\n", 0, text.index("\0")) + 1
        raise DataError(f"{path}, line {line_no}: NUL byte (a binary file?)")
    return text


def document_id(row: dict, line_no: int, path: Path):
    """The `id` of a .jsonl row (default: its line index), if it can be saved and printed as given."""
    doc_id = row.get("id", line_no - 1)
    if isinstance(doc_id, str) or (isinstance(doc_id, int) and not isinstance(doc_id, bool) and doc_id in INT64):
        return doc_id
    raise DataError(f"{path}, line {line_no}: id {doc_id!r} must be an integer (64-bit) or a string")


@dataclass
class Corpus:
    """Documents to index: texts (a text file) or TF-IDF features (a shard folder), their ids, and what a
    hit shows of each document ({id: {"labels": [...]} or {"text": "..."}})."""

    texts: list[str] | None
    features: object | None  # scipy CSR
    ids: list
    shown: dict = field(default_factory=dict)


def snippet(text: str) -> str:
    return " ".join(text.split())[:SNIPPET_CHARS]


def read_corpus(path: Path, split: str) -> Corpus:
    from corrhash.data import TfidfShards

    if path.is_dir():
        shards = TfidfShards(path)
        data = shards.split(split)
        names = shards.label_names
        shown = {doc_id: {"labels": [names[j] for j in row.nonzero()[0]]}
                 for doc_id, row in zip(data.doc_ids.tolist(), data.labels)}
        return Corpus(None, data.features, data.doc_ids, shown)
    if not path.exists():
        raise DataError(f"{path}: no such corpus file or shard folder")
    texts, ids, first_id_line = [], [], None
    for line_no, line in enumerate(read_text(path, "corpus").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            texts.append(line)
            ids.append(line_no - 1)
            continue
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}, line {line_no}: expected a JSON object with a 'text' field") from exc
        ids.append(document_id(row, line_no, path))
        first_id_line = first_id_line or line_no
        if type(ids[-1]) is not type(ids[0]):  # mixed kinds would all become strings in the index
            raise DataError(f"{path}, line {line_no}: id {ids[-1]!r} is {ID_KINDS[type(ids[-1])]}, but line "
                            f"{first_id_line}'s is {ID_KINDS[type(ids[0])]}; use one kind of id")
    return Corpus(texts, None, ids, {doc_id: {"text": snippet(text)} for doc_id, text in zip(ids, texts)})


def warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def describe_model(identity) -> str:
    """A model's identity in a few words: its URI, registry version, logged model and weights' hash."""
    if not isinstance(identity, dict):
        return repr(identity)
    name, version = identity.get("registered_name"), identity.get("registered_version")
    details = [f"{name} version {version}" if name and version else None,
               f"model_id {identity['model_id']}" if identity.get("model_id") else None,
               f"weights sha256 {str(identity.get('weights_sha256'))[:12]}"]
    return f"{identity.get('uri', '?')} ({', '.join(d for d in details if d)})"


def check_model(index, model, index_path: Path, allow_other_model: bool = False,
                warn: Callable[[str], None] = warn_on_stderr) -> None:
    """OtherModelError unless `model` built the saved index (the weights' hash it records); a warning instead
    with allow_other_model. An index recording no model (saved by an older corrhash) is refused the same way."""
    from corrhash.retrieval.index import OtherModelError

    if index.built_with(model.identity):
        return
    given = describe_model(model.identity)
    rebuild = f"jobs/search.py --model {model.identity['uri']} --corpus DOCS --index-out {index_path}"
    if index.model_identity is None:
        problem = (f"{index_path}: saved without the identity of the model that built it (by an older corrhash; "
                   f"its sidecar records only {index.meta.get('model')!r}), so it cannot be checked against "
                   f"the model given, {given}")
    elif index.model_identity["weights_sha256"] == model.identity["weights_sha256"]:
        problem = (f"{index_path}: built with the model {describe_model(index.model_identity)}, whose weights the "
                   f"model given, {given}, has, but with another vocabulary (vocab.json sha256 "
                   f"{str(index.model_identity.get('vocab_sha256'))[:12]} vs {model.identity['vocab_sha256'][:12]}): "
                   "another featurizer makes other codes of the same text, so its hits would be meaningless")
    else:
        problem = (f"{index_path}: built with the model {describe_model(index.model_identity)}, but the model "
                   f"given is {given}: other weights make other codes, so its hits would be meaningless")
    if not allow_other_model:
        raise OtherModelError(f"{problem}; rebuild the index with this model ({rebuild}), or pass "
                              "--allow-other-model to search it anyway")
    warn(f"{problem}; searching it anyway (--allow-other-model)")


def check_vocabulary(model, shards_path: Path, allow_other_model: bool, warn: Callable[[str], None]) -> None:
    """A shard folder's feature columns mean its vocabulary's terms: hashed by a model of another vocabulary (one
    trained on another corpus), its codes are meaningless. Refused (OtherModelError) unless allow_other_model."""
    from corrhash.retrieval.index import OtherModelError

    if model.featurizer is None:
        return
    vocab_path = Path(shards_path) / "vocab.json"
    try:
        terms = json.loads(vocab_path.read_text(encoding="utf-8")).get("terms")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{vocab_path}: cannot read the shards' vocabulary ({exc})") from exc
    if terms == list(model.featurizer.terms):
        return
    differ = sum(a != b for a, b in zip(terms or [], model.featurizer.terms))
    problem = (f"{shards_path} was prepared with another vocabulary than the model's ({differ} of "
               f"{model.n_features} terms differ): the model was trained on another corpus, and its codes of "
               "these documents would be meaningless")
    if not allow_other_model:
        raise OtherModelError(f"{problem}; hash it with a model trained on it, or pass --allow-other-model to "
                              "hash it anyway")
    warn(f"{problem}; hashing it anyway (--allow-other-model)")


def index_for(model, index_path: Path | None, corpus_path: Path | None, split: str = "train", kind: str = "auto",
              allow_other_model: bool = False, warn: Callable[[str], None] = warn_on_stderr,
              encode_corpus: Callable | None = None):
    """(index, shown): a saved index (its bits checked against the model's, its kind against `kind` unless that
    is "auto", and its model against `model`: see check_model) or one of `kind` hashed from a corpus (its
    features checked against the model's vocabulary size), and what each hit shows ({id: {...}}, which a saved
    index keeps: `index.shown`). A shard folder's IVF is calibrated on its val split. `encode_corpus(model,
    folder, split)`: the packed codes of a shard folder's split hashed elsewhere (on Ray Data), in its order."""
    from corrhash.retrieval.index import HammingIndex

    if index_path is not None:
        index = HammingIndex.load(index_path)
        if index.bits != model.bits:
            raise DataError(f"{index_path}: {index.bits}-bit codes, but the model makes {model.bits}-bit codes")
        if kind != "auto" and index.kind != kind:  # a saved index is searched as it was built, never rebuilt
            raise DataError(f"{index_path}: the saved index is {index.kind}, but --index-kind {kind} was asked for; "
                            f"hash --corpus with --index-kind {kind} instead (jobs/search.py --index-out saves it), "
                            "or give --index-kind auto")
        check_model(index, model, index_path, allow_other_model, warn)
        return index, index.shown
    corpus = read_corpus(corpus_path, split)
    if len(corpus.ids) == 0:
        raise DataError(f"{corpus_path}: no documents to index")
    if corpus.features is not None and corpus.features.shape[1] != model.n_features:
        raise DataError(f"{corpus_path}: {corpus.features.shape[1]} features per document, but the model "
                        f"takes {model.n_features} (prepared with another vocabulary?)")
    if corpus.features is not None:
        check_vocabulary(model, corpus_path, allow_other_model, warn)
    queries = calibration_queries(model, corpus_path, split) \
        if corpus.features is not None and HammingIndex.calibrates_ivf(kind, len(corpus.ids)) else None
    codes = encode_corpus(model, corpus_path, split) if encode_corpus is not None and corpus.features is not None \
        else None
    index = model.index(corpus.texts, ids=corpus.ids, features=corpus.features, kind=kind,
                        calibration_queries=queries, shown=corpus.shown, codes=codes)
    return index, index.shown


def calibration_queries(model, shards_path: Path, split: str):
    """Packed codes of a seeded sample of a shard folder's val split, the queries IVF calibrates nprobe on: held-out
    documents are queries like those to come, where the index's own codes would each find themselves at distance 0.
    None (HammingIndex's default sample) when the folder has no val documents or val is the split indexed."""
    from corrhash.data import TfidfShards
    from corrhash.data.stream import ShardStream
    from corrhash.retrieval.ivf import CALIBRATION_QUERIES

    shards = TfidfShards(shards_path)
    val = shards.manifest["splits"].get("val")
    if split == "val" or val is None or sum(entry["rows"] for entry in val["shards"]) == 0:
        return None
    # The same sample Split.sample draws, read one file at a time: val is never held whole for 256 documents.
    return model.encode_features(ShardStream(shards, "val").sample(CALIBRATION_QUERIES, seed=0).features)

