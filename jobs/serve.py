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
--corpus hashed now into an index of --index-kind, as in jobs/search.py), and handed to each replica as built,
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

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

from corrhash.cli import CLI, JobParser, add_dataclass_args, dataclass_from_args, exit_status  # noqa: E402
from corrhash.errors import ConfigError, DataError  # noqa: E402
from corrhash.serve.app import Limits, ServeOptions  # noqa: E402
from corrhash.serve.corpus import describe, index_for  # noqa: E402
from corrhash.serve.index import KINDS  # noqa: E402


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
    index_kind: str = field(default="auto", metadata={CLI: {"choices": KINDS}})
    """index built from --corpus: flat (exact), ivf (approximate, sub-linear) or auto; a loaded --index must match"""
    allow_other_model: bool = False
    """serve an --index built with another model (other weights) or saved without its model's identity, with a
    warning; its hits are then likely meaningless"""
    host: str = "127.0.0.1"
    """address Serve's HTTP proxy listens on (it has no authentication)"""
    port: int = 8000
    """port Serve's HTTP proxy listens on"""
    replicas: int = 1
    """replicas of the app (each holds the model and the index)"""
    replica_cpus: float = 1.0
    """CPUs Ray reserves for each replica"""
    max_ongoing_requests: int = 8
    """requests a replica accepts at once; more wait in the proxy"""
    max_body_bytes: int = 1 << 20
    """largest request body (bytes); larger ones get 413"""
    max_texts: int = 1000
    """most texts in one request"""
    max_k: int = 1000
    """largest k of a /search request"""
    address: str | None = None
    """Ray cluster to serve on; default: $RAY_ADDRESS when set, else an embedded local Ray"""
    name: str = "corrhash"
    """Serve application name (an app of that name on the cluster is replaced)"""
    route_prefix: str = "/"
    """URL path the endpoints sit under (/search, or e.g. /corrhash/search); apps on one cluster need their own"""

    def validate(self) -> None:
        if (self.corpus is None) == (self.index is None):
            raise ConfigError("give exactly one of --index (to load) or --corpus (to hash)")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: must be from 1 to 65535")
        if self.replicas < 1:
            raise ConfigError(f"--replicas {self.replicas}: must be at least 1")
        if not self.replica_cpus > 0:
            raise ConfigError(f"--replica-cpus {self.replica_cpus}: must be more than 0")
        if self.max_ongoing_requests < 1:
            raise ConfigError(f"--max-ongoing-requests {self.max_ongoing_requests}: must be at least 1")
        if not self.name.strip() or "/" in self.name:
            raise ConfigError(f"--name {self.name!r}: must be a non-empty name without '/'")
        if not self.route_prefix.startswith("/") or (self.route_prefix != "/" and self.route_prefix.endswith("/")):
            raise ConfigError(f"--route-prefix {self.route_prefix!r}: must start with '/' and not end with one "
                              "(e.g. / or /corrhash)")
        self.limits().validate()

    def limits(self) -> Limits:
        return Limits(self.max_body_bytes, self.max_texts, self.max_k)

    def serve_options(self) -> ServeOptions:
        return ServeOptions(self.host, self.port, self.replicas, self.replica_cpus, self.max_ongoing_requests,
                            self.name, self.route_prefix)


def parse_args(argv: list[str] | None = None) -> ServeJobOptions:
    parser = JobParser(__doc__)
    add_dataclass_args(parser, ServeJobOptions, "serve")
    return dataclass_from_args(ServeJobOptions, parser.parse_args(argv))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_payload(options: ServeJobOptions):
    """The model and its index (loaded or hashed from --corpus), with the checks jobs/search.py makes."""
    import corrhash
    from corrhash.serve.app import Payload

    model = corrhash.load(options.model)
    if model.featurizer is None:
        raise DataError(f"--model {options.model}: the model has no vocabulary, so it cannot hash text")
    index, shown = index_for(model, options.index, options.corpus, options.split, options.index_kind,
                             options.allow_other_model)
    log(f"loaded {options.model} ({model.bits} bits) and an index of {len(index)} documents ({describe(index)})")
    return Payload.of(options.model, model, index, shown)


def serve_until_stopped(options: ServeJobOptions) -> None:
    from corrhash.launch.connect import init_ray
    from corrhash.serve import app as serving

    payload = load_payload(options)  # before Ray: a bad model or index fails fast, with its name
    init_ray(options.address)
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # again: ray.init installs its own, which would abort
    serving.start(options.serve_options())
    try:
        url = serving.run(payload, options.limits(), options.serve_options())
        health = serving.wait_ready(url)
        log(f"serving {health['documents']} documents on {url} (POST /search, POST /encode, GET /healthz; "
            f"API docs {url}/docs); Ctrl-C or SIGTERM stops")
        while True:
            time.sleep(3600)
    finally:
        log(f"stopping: deleting the Serve app {options.name!r}")
        serving.undeploy(options.name)


def exit_on_sigterm(signum, frame) -> None:
    """SIGTERM: exit through the `finally` that deletes the app. Ray's C++ handler, which sees SIGTERM first and
    passes it on, has set a 3 s alarm that aborts the process (ray-project/ray#64830); deleting the app takes
    longer, so the alarm is cancelled."""
    signal.alarm(0)
    sys.exit(128 + signum)


def main(argv=None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_sigterm)

    def body() -> None:
        options.validate()
        serve_until_stopped(options)

    try:
        return exit_status(body)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
