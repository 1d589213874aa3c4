"""A trained model and its index behind Ray Serve: `POST /search`, `POST /encode` and `GET /healthz`, JSON in and out.

The driver (jobs/serve.py) loads the model and the index once, where the registry and the files are, and
hands them to every replica as a `Payload` (the model's three files as bytes, the index, what a hit shows of
each document): replicas on any node need no MLflow access and no shared file system. The payload travels in
the deployment's configuration, serialized by Ray between its own processes inside the token-authenticated
cluster; a replica reads the model from the safetensors + JSON files it was given, as `corrhash.load` reads a
folder. The index travels as it was built (arrays, kind, IVF centroids and recorded recall; faiss's own
structure stays behind and is rebuilt from them on a replica's first search), so every replica searches the
index of the kind asked for, calibrated once, rather than choosing and calibrating one of its own. The
payload's size is the index's (the code bytes, an id, and a hit's labels or snippet per document), so an index
of millions of documents is better served from a saved --index (ids only).

Every answer is JSON. A malformed request gets a 4xx `{"error": "..."}` naming what is wrong; an
unexpected failure is logged on the replica and answered 500 `{"error": "internal error"}`, never with a
traceback. Request bodies are read in chunks and refused (413) past `Limits.max_body_bytes`, before they
are parsed. Serve's HTTP proxy has no authentication (Ray's token covers the cluster's own RPCs, not
this port): it listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corrhash.errors import ConfigError

MODEL_FILES = ("model.json", "model.safetensors", "vocab.json")  # a corrhash model folder (corrhash.artifact)
ROUTES = {"/search": "POST", "/encode": "POST", "/healthz": "GET"}
logger = logging.getLogger("ray.serve")  # Serve's replica log (its stderr is not kept)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each bound keeps a replica's memory and latency per request bounded."""

    max_body_bytes: int = 1 << 20
    max_texts: int = 1000
    max_k: int = 1000

    def validate(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a positive integer")


@dataclass
class Payload:
    """What a replica serves: the model's files, the index, and what a hit shows of a document."""

    model: str
    """the URI or folder the model came from (reported by /healthz, the metrics' job_name)"""
    model_files: dict[str, bytes]
    index: object
    """the HammingIndex to search (it pickles without its faiss structure)"""
    shown: dict = field(default_factory=dict)

    @classmethod
    def of(cls, uri: str, model, index, shown: dict | None = None) -> "Payload":
        """From a loaded HashingModel (`corrhash.load`) and HammingIndex."""
        files = {name: (model.directory / name).read_bytes() for name in MODEL_FILES}
        return cls(str(uri), files, index, dict(shown or {}))


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def parse_json_object(body: bytes) -> dict:
    try:
        request = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"request body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") \
            from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "request body is not valid JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise HttpError(422, f"request body must be a JSON object, got {type(request).__name__}")
    return request


def checked_texts(request: dict, limits: Limits) -> list[str]:
    texts = request.get("texts")
    if texts is None:
        raise HttpError(422, "'texts' is missing: give a list of texts")
    if not isinstance(texts, list):
        raise HttpError(422, f"'texts' must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise HttpError(422, "'texts' is empty: give at least one text")
    if len(texts) > limits.max_texts:
        raise HttpError(422, f"'texts' has {len(texts)} texts; at most {limits.max_texts} per request")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise HttpError(422, f"'texts'[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise HttpError(422, f"'texts'[{i}] is empty")
    return texts


def checked_k(request: dict, limits: Limits) -> int:
    k = request.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise HttpError(422, f"'k' must be an integer from 1 to {limits.max_k}, got {json.dumps(k)}")
    return k


def refuse_unknown_fields(request: dict, known: set[str]) -> None:
    unknown = sorted(set(request) - known)
    if unknown:  # a misspelt 'k' would otherwise be answered with the default silently
        raise HttpError(422, f"unknown field {unknown[0]!r}; expected {', '.join(sorted(known))}")


class Searcher:
    """Answers one request's JSON with the model and the index (no HTTP, no Ray: the replica's core)."""

    def __init__(self, payload: Payload, limits: Limits):
        from corrhash.serve.hashing import HashingModel

        # The model is read from its files as corrhash.load reads a folder: safetensors and JSON only.
        self._folder = tempfile.TemporaryDirectory(prefix="corrhash-serve-")
        for name, data in payload.model_files.items():
            (Path(self._folder.name) / name).write_bytes(data)
        self.model = HashingModel(self._folder.name)
        self.index = payload.index
        self.shown, self.limits, self.uri = payload.shown, limits, payload.model

    def health(self) -> dict:
        return {"status": "ok", "model": self.uri, "bits": self.model.bits, "documents": len(self.index)}

    def encode(self, request: dict) -> dict:
        refuse_unknown_fields(request, {"texts"})
        texts = checked_texts(request, self.limits)
        features = self.model.featurize(texts)
        codes = self.model.encode_features(features)
        in_vocabulary = np.diff(features.indptr)
        return {"bits": self.model.bits,
                "codes": [row.tobytes().hex() for row in codes],  # as the MLflow pyfunc model answers
                "in_vocabulary": [int(n) for n in in_vocabulary]}

    def search(self, request: dict) -> dict:
        refuse_unknown_fields(request, {"texts", "k"})
        texts, k = checked_texts(request, self.limits), checked_k(request, self.limits)
        features = self.model.featurize(texts)
        ids, distances = self.index.search(self.model.encode_features(features), k)
        results = []
        for j, n in enumerate(np.diff(features.indptr)):
            hits = [{"id": doc.item(), "distance": int(d), **self.shown.get(doc.item(), {})}
                    for doc, d in zip(ids[j], distances[j])]
            result = {"query": j, "in_vocabulary": int(n), "hits": hits}
            if n == 0:
                result["warning"] = "no term of the model's vocabulary: the hits are arbitrary"
            results.append(result)
        return {"k": k, "results": results}


def app_path(scope: dict) -> str:
    """The request's path inside the app: Serve keeps the full path and puts the route prefix in root_path."""
    path, prefix = scope.get("path", "/"), scope.get("root_path", "")
    return path[len(prefix):] if prefix and path.startswith(prefix) else path


def route(path: str, method: str) -> str:
    """The endpoint a request names (its path inside the app), or the 404/405 it gets."""
    path = path.rstrip("/") or "/"
    if path not in ROUTES:
        raise HttpError(404, f"no endpoint {path}; endpoints: {', '.join(f'{m} {p}' for p, m in ROUTES.items())}")
    allowed = ROUTES[path]
    if method != allowed:
        raise HttpError(405, f"{method} {path}: use {allowed}", {"Allow": allowed})
    return path


async def read_body(request, limit: int) -> bytes:
    """The body, read in chunks and refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise HttpError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise HttpError(413, f"request body of {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class SearchReplica:
    """The Serve deployment's class: one Searcher per replica, behind plain Starlette request handling (no
    FastAPI: every answer, error or not, is built here)."""

    def __init__(self, payload: Payload, limits: Limits):
        from corrhash.runs.metrics import SearchExporter

        self.searcher = Searcher(payload, limits)
        self.exporter = SearchExporter(job=payload.model)

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        try:
            status, answer, headers = 200, await self.answer(request), {}
        except HttpError as exc:
            status, answer, headers = exc.status, {"error": exc.message}, exc.headers
        except Exception:  # noqa: BLE001 - the client gets a line, the replica's log the traceback
            logger.exception("corrhash serve: %s %s failed", request.method, request.url.path)
            status, answer, headers = 500, {"error": "internal error (see the replica's log)"}, {}
        return JSONResponse(answer, status_code=status, headers=headers)

    async def answer(self, request) -> dict:
        endpoint = route(app_path(request.scope), request.method)
        if endpoint == "/healthz":
            return self.searcher.health()
        body = parse_json_object(await read_body(request, self.searcher.limits.max_body_bytes))
        texts = body.get("texts")
        with self.exporter.timed(len(texts) if isinstance(texts, list) else 0):
            # Synchronous on purpose: the work is CPU-bound, so one request at a time per replica.
            return self.searcher.search(body) if endpoint == "/search" else self.searcher.encode(body)


@dataclass(frozen=True)
class ServeOptions:
    """Where and how many: the Serve side of jobs/serve.py's options."""

    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    replica_cpus: float = 1.0
    max_ongoing_requests: int = 8
    name: str = "corrhash"
    route_prefix: str = "/"


def serve_config_error(options: ServeOptions) -> str | None:
    """Why Serve, already running on the cluster, would not listen where asked (its HTTP options are fixed
    while it runs, and `serve.start` only warns about a difference); None if it listens there."""
    from ray.serve.context import _get_global_client  # no public API reports the running proxy's options

    config = _get_global_client().http_config
    if (config.host, config.port) != (options.host, options.port):
        return (f"Serve already runs on this cluster, listening on {config.host}:{config.port}; it keeps those "
                f"HTTP options until it shuts down (give --host {config.host} --port {config.port}, or stop it)")
    return None


def start(options: ServeOptions) -> None:
    """Start Serve on the connected cluster listening on options.host:port, or find it already there."""
    from ray import serve

    serve.start(http_options={"host": options.host, "port": options.port})
    problem = serve_config_error(options)
    if problem:
        raise ConfigError(problem)


def run(payload: Payload, limits: Limits, options: ServeOptions) -> str:
    """Run the application (replacing one of the same name) with its replicas up; its base URL."""
    from ray import serve

    deployment = serve.deployment(SearchReplica, name="search").options(
        num_replicas=options.replicas, max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.replica_cpus})
    serve.run(deployment.bind(payload, limits), name=options.name, route_prefix=options.route_prefix)
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    return f"http://{host}:{options.port}{options.route_prefix.rstrip('/')}"


def undeploy(name: str) -> None:
    """Delete our application; shut Serve down too when no other application is left on the cluster."""
    from ray import serve

    serve.delete(name)
    if not serve.status().applications:
        serve.shutdown()


def wait_ready(url: str, timeout_s: float = 60.0) -> dict:
    """/healthz's answer once the proxy routes to a replica (serve.run returns when replicas are up, but the
    proxy learns the route a moment later)."""
    import urllib.error
    import urllib.request

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise ConfigError(f"{url}/healthz: no answer after {math.ceil(timeout_s)} s ({last}); Serve listens on the "
                      "Ray head node: run the job there (e.g. with `ray job submit`)")
