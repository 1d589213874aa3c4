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
"text" (its first 80 characters) for a .jsonl or text file. --index-out X.npz (codes, ids and what the
hits show) also writes X.json (bits, size, the model, and an IVF index's parameters and calibrated recall)
beside it; the model is its identity: the SHA-256 of its weights, the URI given and, from MLflow, its
model_id and registry name and version (models:/NAME@ALIAS is recorded as the version it named).

--index X.npz answers as the --corpus it was hashed from did (labels or text included), and only with the
model that built it: another model's (other weights, e.g. after @champion moved) is an error naming both,
as is an index saved by an older corrhash without its model's identity (rebuild it with --corpus ...
--index-out); --allow-other-model searches it anyway, with a warning.

--index-kind: flat searches every code (exact); ivf only the lists nearest a query (sub-linear, approximate:
its nprobe is calibrated to recall@100 >= 0.95, on a sample of the val split of a shard folder --corpus, else
on the index's own codes); auto is flat below 500,000 documents and above them ivf where that pays.

Live metrics: connected to a Ray cluster (--address, or $RAY_ADDRESS as `ray job submit` sets it), the
job exports queries answered and per-batch latency (`corrhash_search_*`, dashboards/README.md); queries
are answered --batch at a time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from corrhash import commands
from corrhash.errors import ConfigError, DataError
from corrhash.launch.live import exporting
from corrhash.serve.corpus import read_text
from corrhash.retrieval.index import IndexKind


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
    index_kind: IndexKind = "auto"
    """index built from --corpus: flat (exact), ivf (approximate, sub-linear) or auto; a loaded --index must match"""
    allow_other_model: bool = False
    """search an --index built with another model (other weights) or saved without its model's identity, or hash
    a shard-folder --corpus prepared with another vocabulary than the model's (a model of another corpus), with a
    warning; its hits are then likely meaningless"""
    queries: str | None = None
    """file of queries, one per line, or - for stdin"""
    k: int = 10
    """hits per query"""
    batch: int = 256
    """queries hashed and searched together (the unit of the exported latency)"""
    ray: bool = False
    """hash a shard-folder --corpus on Ray Data across the cluster (an actor pool holding the model; the same
    codes as one process)"""
    hash_actors: int = 2
    """with --ray: actors hashing at once (one CPU each)"""
    codes_out: Path | None = None
    """with --ray: keep the corpus's code shards (Parquet: doc_id, code) and codes.json here"""
    address: str | None = None
    """Ray cluster for --ray's hashing and to export live search metrics to; default: $RAY_ADDRESS when set, else
    a local Ray for --ray and no export"""
    linger_s: float = 0.0
    """after answering, stay connected this long so Prometheus scrapes the last metrics (Ray exports every 10 s)"""

    def __post_init__(self) -> None:
        if (self.corpus is None) == (self.index is None):
            raise ConfigError("give exactly one of --corpus (to hash) or --index (to load)")
        if self.k < 1:
            raise ConfigError(f"--k {self.k}: must be at least 1")
        if self.batch < 1:
            raise ConfigError(f"--batch {self.batch}: must be at least 1")
        if not 0 <= self.linger_s <= 3600:
            raise ConfigError(f"--linger-s {self.linger_s}: must be between 0 and 3600 seconds")
        if self.hash_actors < 1:
            raise ConfigError(f"--hash-actors {self.hash_actors}: must be at least 1")
        if (self.codes_out is not None or self.hash_actors != 2) and not self.ray:
            raise ConfigError("--codes-out and --hash-actors apply with --ray only")
        if self.ray:
            require_shard_corpus(self.corpus, "--ray", "drop --ray")
        if self.index_out and self.index_out.suffix == ".json":
            raise ConfigError(f"--index-out {self.index_out}: its JSON sidecar would overwrite it; name it .npz")


def require_shard_corpus(corpus: Path | None, option: str, instead: str) -> None:
    """Ray Data hashes a prepared shard folder only: a named error for any other --corpus."""
    if corpus is None or not (corpus / "manifest.json").is_file():
        raise ConfigError(f"{option} hashes a prepared shard folder on Ray Data; --corpus {corpus} is not one "
                          f"(a .jsonl or text file is hashed in this process: {instead})")


def parse_args(argv: list[str] | None = None) -> SearchOptions:
    return commands.parse(SearchOptions, __doc__, argv, title="search")


def main(argv=None) -> int:
    def job() -> None:
        options = parse_args(argv)
        queries = read_queries(options.queries) if options.queries else []  # a file: checked before any work
        answer(options, queries)

    return commands.run(job)


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
    import corrhash
    from corrhash.serve.corpus import index_for
    from corrhash.serve.search import Searcher
    model = corrhash.load(args.model)
    encode_corpus = None
    if args.ray:
        from corrhash.launch.connect import init_ray
        from corrhash.runs.hash_corpus import ray_corpus_encoder

        init_ray(args.address)
        commands.install_sigterm()
        encode_corpus = ray_corpus_encoder(args.hash_actors, args.codes_out)
    started = time.monotonic()
    index, shown = index_for(model, args.index, args.corpus, args.split, args.index_kind, args.allow_other_model,
                             encode_corpus=encode_corpus)
    if args.corpus is not None:
        print(f"indexed {len(index)} documents from {args.corpus} in {time.monotonic() - started:.1f} s "
              f"({index.describe()})", file=sys.stderr)
    if args.index_out:
        index.save(args.index_out)
        print(f"saved index to {args.index_out}", file=sys.stderr)
    searcher, exporter, start = Searcher(model, index, shown, args.model), search_metrics(args), 0
    for batch in batches(queries, args.batch):
        with exporter.timed(len(batch)):
            results = searcher.search(batch, args.k)
        for query, result in zip(batch, results):
            if "warning" in result:
                print(f"warning: query {start + result['query']} has no term of the model's vocabulary; its hits "
                      "are arbitrary", file=sys.stderr)
            print(json.dumps({"query": start + result["query"], "text": query,
                              "in_vocabulary": result["in_vocabulary"], "hits": result["hits"]}))
        sys.stdout.flush()
        start += len(batch)
    if args.linger_s and exporting():
        print(f"keeping the search metrics exported for {args.linger_s:g} s (--linger-s)", file=sys.stderr)
        time.sleep(args.linger_s)


def search_metrics(args: SearchOptions):
    """The exporter of query counts and latency: connected to Ray when --address or $RAY_ADDRESS names a
    cluster (otherwise it records nothing)."""
    from corrhash.launch.live import SearchExporter

    if args.ray or args.address or os.environ.get("RAY_ADDRESS"):
        from corrhash.launch.connect import init_ray

        init_ray(args.address)  # None: init_ray reads $RAY_ADDRESS, and its errors name it
    return SearchExporter(job=args.model)
