"""Hash a corpus with a trained model and answer queries with the nearest documents (JSONL out).

Examples:
  python jobs/search.py --model models:/corrhash-20ng-64b@champion --corpus data/20ng --index-out idx.npz
  echo "the shuttle launch was delayed" | python jobs/search.py --model ... --index idx.npz --queries - --k 5
  python jobs/search.py --model runs:/RUN_ID/model --corpus docs.jsonl --queries questions.txt

--corpus is a prepared shard folder (its --split, ids = doc_id), a UTF-8 .jsonl file (a `text` field
and an optional `id`: an integer or a string, the same kind on every line; default: the line's index)
or a UTF-8 text file (one document per line, ids = line numbers). Queries come one per line from
--queries FILE or stdin (-); stdin is answered --batch lines at a time as they arrive (--batch 1: each
line at once), so a pipe works as a query stream. Each answer line: {"query": i, "text": ..., "in_vocabulary": n, "hits":
[{"id", "distance", ...}]}, where n counts the model's vocabulary terms in the query; a query with none
has a meaningless code, so its hits are arbitrary and a warning goes to stderr. A hit from a --corpus
also says what the document is: "labels" (label names) for a shard folder, which keeps no text, and
"text" (its first 80 characters) for a .jsonl or text file. --index-out X.npz also writes X.json
(bits, size, model) beside it.

Live metrics: connected to a Ray cluster (--address, or $RAY_ADDRESS as `ray job submit` sets it), the
job exports queries answered and per-batch latency (`corrhash_search_*`, dashboards/README.md); queries
are answered --batch at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import add_dataclass_args, dataclass_from_args  # noqa: E402
from corrhash.errors import ConfigError, CorrhashError, DataError  # noqa: E402
from corrhash.runs.metrics import exporting  # noqa: E402

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


def read_queries(source: str):
    """The queries of a file (read and checked whole, before any work), or an iterator over stdin's lines
    (`-`), so a pipe gets each batch's answers as soon as its queries arrive."""
    if source != "-":
        return [line for line in read_text(Path(source), "queries").splitlines() if line.strip()]
    return stdin_queries()


def stdin_queries():
    line_no = 0
    try:
        for line_no, line in enumerate(sys.stdin, start=1):
            if "\0" in line:
                raise DataError(f"--queries - (stdin), line {line_no}: NUL byte (binary input?)")
            if line.strip():
                yield line.rstrip("\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"--queries - (stdin), line {line_no + 1}: not UTF-8 text") from exc


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


@dataclass
class SearchOptions:
    model: str
    """models:/NAME@champion, runs:/ID/model or a model folder"""
    corpus: Path | None = None
    """documents to index (shard folder, .jsonl or .txt)"""
    split: str = "train"
    """split of a shard folder to index"""
    index: Path | None = None
    """load a saved index instead of hashing --corpus"""
    index_out: Path | None = None
    """save the index here (.npz + .json beside it)"""
    queries: str | None = None
    """file of queries, one per line, or - for stdin"""
    k: int = 10
    """hits per query"""
    batch: int = 256
    """queries hashed and searched together (the unit of the exported latency)"""
    address: str | None = None
    """Ray cluster to export live search metrics to; default: $RAY_ADDRESS when set, else no export"""
    linger_s: float = 0.0
    """after answering, stay connected this long so Prometheus scrapes the last metrics (Ray exports every 10 s)"""

    def validate(self) -> None:
        if (self.corpus is None) == (self.index is None):
            raise ConfigError("give exactly one of --corpus (to hash) or --index (to load)")
        if self.k < 1:
            raise ConfigError(f"--k {self.k}: must be at least 1")
        if self.batch < 1:
            raise ConfigError(f"--batch {self.batch}: must be at least 1")
        if not 0 <= self.linger_s <= 3600:
            raise ConfigError(f"--linger-s {self.linger_s}: must be between 0 and 3600 seconds")
        if self.index_out and self.index_out.suffix == ".json":
            raise ConfigError(f"--index-out {self.index_out}: its JSON sidecar would overwrite it; name it .npz")


def parse_args(argv: list[str] | None = None) -> SearchOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, SearchOptions, "search")
    return dataclass_from_args(SearchOptions, parser.parse_args(argv))


def main(argv=None) -> int:
    options = parse_args(argv)
    try:
        options.validate()
        queries = read_queries(options.queries) if options.queries else []  # a file: checked before any work
        answer(options, queries)
    except CorrhashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # last resort: the library names what it can as a DataError
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


def batches(queries, size: int):
    batch = []
    for query in queries:
        batch.append(query)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def answer(args: SearchOptions, queries) -> None:
    import numpy as np

    import corrhash
    from corrhash.serve.index import HammingIndex

    model = corrhash.load(args.model)
    shown = {}  # a loaded index has ids only
    if args.index:
        index = HammingIndex.load(args.index)
        if index.bits != model.bits:
            raise DataError(f"{args.index}: {index.bits}-bit codes, but the model makes {model.bits}-bit codes")
    else:
        corpus = read_corpus(args.corpus, args.split)
        if len(corpus.ids) == 0:
            raise DataError(f"{args.corpus}: no documents to index")
        if corpus.features is not None and corpus.features.shape[1] != model.n_features:
            raise DataError(f"{args.corpus}: {corpus.features.shape[1]} features per document, but the model "
                            f"takes {model.n_features} (prepared with another vocabulary?)")
        index = model.index(corpus.texts, ids=corpus.ids, features=corpus.features)
        shown = corpus.shown
        print(f"indexed {len(index)} documents from {args.corpus}", file=sys.stderr)
    if args.index_out:
        index.save(args.index_out)
        print(f"saved index to {args.index_out}", file=sys.stderr)
    exporter, start = search_metrics(args), 0
    for batch in batches(queries, args.batch):
        with exporter.timed(len(batch)):
            features = model.featurize(batch)
            ids, distances = index.search(model.encode_features(features), args.k)
        in_vocabulary = np.diff(features.indptr)  # distinct vocabulary terms per query
        for j, query in enumerate(batch):
            if in_vocabulary[j] == 0:
                print(f"warning: query {start + j} has no term of the model's vocabulary; its hits are arbitrary",
                      file=sys.stderr)
            hits = [{"id": d.item(), "distance": int(h), **shown.get(d.item(), {})}
                    for d, h in zip(ids[j], distances[j])]
            print(json.dumps({"query": start + j, "text": query, "in_vocabulary": int(in_vocabulary[j]),
                              "hits": hits}))
        sys.stdout.flush()
        start += len(batch)
    if args.linger_s and exporting():
        print(f"keeping the search metrics exported for {args.linger_s:g} s (--linger-s)", file=sys.stderr)
        time.sleep(args.linger_s)


def search_metrics(args: SearchOptions):
    """The exporter of query counts and latency: connected to Ray when --address or $RAY_ADDRESS names a
    cluster (otherwise it records nothing)."""
    from corrhash.runs.metrics import SearchExporter

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        from corrhash.runs.cluster import init_ray

        init_ray(address)
    return SearchExporter(job=args.model)

if __name__ == "__main__":
    sys.exit(main())
