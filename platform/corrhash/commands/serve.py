"""Serve a trained model and an index over HTTP with Ray Serve, until Ctrl-C or SIGTERM.

Examples:
  python jobs/serve.py --model models:/corrhash-20ng-64b@champion --index idx.npz
  python jobs/serve.py --model runs:/RUN_ID/model --corpus data/20ng --split train --replicas 2 --port 8001
  curl -s localhost:8000/search -H 'Content-Type: application/json' \\
    -d '{"texts": ["the shuttle launch was delayed"], "k": 5}'

Endpoints (JSON in and out):
  POST /search  {"texts": [...], "k": 10}  ->  {"k", "results": [{"query": i, "in_vocabulary": n, "hits":
                [{"id", "distance", ...}]}]}; a hit also has "labels" (a shard folder) or "text" (its first
                80 characters; a .jsonl or text file) of the --corpus, or of the one an --index was hashed
                from (an index saved by an older corrhash keeps none), as in jobs/search.py
  POST /encode  {"texts": [...]}  ->  {"bits", "codes": [hex of the packed code bytes], "in_vocabulary"}
  GET  /healthz ->  {"status": "ok", "model", "bits", "documents"}
  GET  /docs, /openapi.json  ->  the API's documentation and OpenAPI schema (FastAPI's)
A malformed request gets a 4xx {"error": "..."}: 400 unreadable JSON, 413 a body over --max-body-bytes,
415 a body not sent as Content-Type: application/json, 422 a field of the wrong type or out of range (the
message names it), 404 and 405.

The model and the index are loaded here, once (--model as for jobs/search.py; --index a saved index, or
--corpus hashed now into an index of --index-kind, as in jobs/search.py; a shard folder on Ray Data with
--hash-actors N, as search.py --ray, or an --index it saved), and handed to each replica as built,
so replicas need neither MLflow nor the files, and all search the same index. An --index is served only with
the model that built it (the weights' hash it records; e.g. not after @champion moved): another is an error
naming both, unless --allow-other-model (a warning).
--address joins a Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray with token auth); Serve's
HTTP proxy then runs there, on --host:--port of the head node (and of each node holding a replica), so run
the job on the head, e.g. with `ray job submit -- python jobs/serve.py ...` (`ray job stop` sends the
SIGTERM that ends it). That port has no authentication: keep it on 127.0.0.1 (the default) or behind a
proxy that has. Serve's HTTP options are fixed while Serve runs on a cluster: a second app must use the
same --host and --port, and its own --name and --route-prefix. On exit the app is deleted, and Serve shut down if no other
app is left.

Live metrics: each replica exports queries answered and per-request latency (`corrhash_search_*`,
dashboards/README.md), job_name = --model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from corrhash import commands
from corrhash.commands.search import require_shard_corpus
from corrhash.errors import ConfigError, DataError
from corrhash.serve.app import Limits, ServeOptions
from corrhash.serve.corpus import index_for
from corrhash.retrieval.index import IndexKind


@dataclass
class ServeJobOptions:
    model: str
    """models:/NAME@champion, runs:/ID/model or a model folder"""
    index: Path | None = None
    """a saved index (.npz, from jobs/search.py --index-out)"""
    corpus: Path | None = None
    """documents to hash and serve instead (shard folder, .jsonl or .txt)"""
    split: str = "train"
    """split of a shard folder to index"""
    index_kind: IndexKind = "auto"
    """index built from --corpus: flat (exact), ivf (approximate, sub-linear) or auto; a loaded --index must match"""
    hash_actors: int = 0
    """hash a shard-folder --corpus on Ray Data with this many actors (one CPU each) across the cluster the app
    serves on, writing the same codes as one process; 0 hashes it here"""
    allow_other_model: bool = False
    """serve an --index built with another model (other weights) or saved without its model's identity, or hash
    a shard-folder --corpus prepared with another vocabulary than the model's (a model of another corpus), with a
    warning; its hits are then likely meaningless"""
    serve: ServeOptions = ServeOptions()
    """where Serve listens and how many replicas"""
    limits: Limits = Limits()
    """what one request may ask for"""
    address: str | None = None
    """Ray cluster to serve on; default: $RAY_ADDRESS when set, else an embedded local Ray"""

    def __post_init__(self) -> None:
        if (self.corpus is None) == (self.index is None):
            raise ConfigError("give exactly one of --index (to load) or --corpus (to hash)")
        if self.hash_actors < 0:
            raise ConfigError(f"--hash-actors {self.hash_actors}: must be 0 (hash here) or more")
        if self.hash_actors:
            require_shard_corpus(self.corpus, f"--hash-actors {self.hash_actors}", "leave --hash-actors at 0")


def parse_args(argv: list[str] | None = None) -> ServeJobOptions:
    return commands.parse(ServeJobOptions, __doc__, argv, title="serve")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_payload(options: ServeJobOptions, encode_corpus=None):
    """The model and its index (loaded or hashed from --corpus, by `encode_corpus` when given), with the checks
    jobs/search.py makes."""
    import corrhash
    from corrhash.serve.app import Payload

    model = corrhash.load(options.model)
    if model.featurizer is None:
        raise DataError(f"--model {options.model}: the model has no vocabulary, so it cannot hash text")
    index, shown = index_for(model, options.index, options.corpus, options.split, options.index_kind,
                             options.allow_other_model, encode_corpus=encode_corpus)
    log(f"loaded {options.model} ({model.bits} bits) and an index of {len(index)} documents ({index.describe()})")
    return Payload.of(options.model, model, index, shown)


def build(args):
    """The application builder of `serve run corrhash.commands.serve:build model=... index=...`, `serve deploy
    cluster/serve-config.yaml` and a RayService (Ray Serve's "pass arguments to applications"; `args`: a
    serve.app.ServeArgs or its mapping). It loads the model and the index where the config is applied, with this
    job's checks (an index is served only by the model that built it), and ships them to the replicas. When
    `champion` moves, deploy again with the index the new champion built: Serve replaces the replicas one by one."""
    from corrhash.serve.app import ServeArgs, application

    args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
    options = ServeJobOptions(model=args.model, index=Path(args.index), allow_other_model=args.allow_other_model)
    return application(load_payload(options), args.limits())


def serve_until_stopped(options: ServeJobOptions) -> None:
    from corrhash.launch.connect import init_ray
    from corrhash.serve import app as serving

    if options.hash_actors:
        from corrhash.runs.hash_corpus import ray_corpus_encoder

        init_ray(options.address)
        payload = load_payload(options, ray_corpus_encoder(options.hash_actors, None))
    else:
        payload = load_payload(options)  # before Ray: a bad model or index fails fast, with its name
        init_ray(options.address)
    commands.install_sigterm()  # again: ray.init installs its own, which would abort
    log(f"starting Serve's HTTP proxy on {options.serve.host}:{options.serve.port} and {options.serve.replicas} "
        "replica(s) holding the model and the index (a minute or so)")  # the job's longest silent wait otherwise
    serving.start(options.serve)
    try:
        url = serving.run(payload, options.limits.with_host(options.serve.host), options.serve)
        health = serving.wait_ready(url)
        log(f"serving {health['documents']} documents on {url} (POST /search, POST /encode, GET /healthz; "
            f"API docs {url}/docs); Ctrl-C or SIGTERM stops")
        while True:
            time.sleep(3600)
    finally:
        log(f"stopping: deleting the Serve app {options.serve.name!r}")
        serving.undeploy(options.serve.name)


def main(argv=None) -> int:
    def job() -> int | None:
        options = parse_args(argv)
        try:
            serve_until_stopped(options)
        except KeyboardInterrupt:
            return 130
        return None

    return commands.run(job)
