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

HTTP is Serve's FastAPI integration (`serve.ingress`): pydantic models validate each request and describe each
answer, so the API documents itself at `/docs` and `/openapi.json`. The FastAPI app is built on each replica,
after its constructor (`__serve_build_asgi_app__`), because the request models carry this deployment's limits
(--max-texts, --max-k), which validation enforces and the schema states. Every answer but /docs's page is
JSON. A malformed request gets a 4xx `{"error": "..."}` naming what is wrong: FastAPI's validation and parsing
errors are rewritten into that one line, in the words this API has always used (`'k' must be an integer from 1
to 1000, got 5000`). An unexpected failure is logged on the replica and answered 500 `{"error": "internal
error"}`, never with a traceback. A middleware refuses (413) a body past `Limits.max_body_bytes` as it
streams, before it is parsed. A body is read as JSON only when sent as JSON (`Content-Type: application/json`:
FastAPI's strict default, which keeps a browser's cross-site form posts out); another gets 415 saying so.
Serve's HTTP proxy has no authentication (Ray's token covers the cluster's own RPCs, not this port): it listens
on 127.0.0.1 unless told otherwise.
"""

# No `from __future__ import annotations`: FastAPI and pydantic read the annotations of the endpoints and models
# that build_app and request_models define inside themselves, which string annotations would hide from them.

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Annotated, Callable

from pydantic import BaseModel, ConfigDict, Field

from corrhash.package import __version__
from corrhash.errors import ConfigError

ROUTES = {"/search": "POST", "/encode": "POST", "/healthz": "GET"}
INTERNAL_ERROR = "internal error (see the replica's log)"
logger = logging.getLogger("ray.serve")  # Serve's replica log (its stderr is not kept)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each bound keeps a replica's memory and latency per request bounded."""

    max_body_bytes: int = 1 << 20
    """largest request body (bytes); larger ones get 413"""
    max_texts: int = 1000
    """most texts in one request"""
    max_k: int = 1000
    """largest k of a /search request"""
    max_hits: int = 100_000
    """most hits one /search request may ask for (texts x k; its answer is ~90 bytes a hit); more get 422"""
    body_timeout_s: float = 10.0
    """seconds a request's body may take to arrive; a slower one gets 408 and frees its replica slot (each of the
    --max-ongoing-requests slots would otherwise be held by any client that sends headers and then nothing)"""
    allowed_hosts: tuple[str, ...] = ()
    """Host header names answered besides localhost, 127.0.0.1, ::1 and --host ('*': any); others get 400, so a
    web page whose domain rebinds to this address cannot read the index"""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_texts", "max_k", "max_hits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a positive integer")
        if not 0 < self.body_timeout_s <= 3600:
            raise ConfigError(f"--body-timeout-s {self.body_timeout_s}: must be more than 0 and at most 3600")
        for host in self.allowed_hosts:
            if not host or any(c in host for c in "/ :@") and not host.startswith("["):
                raise ConfigError(f"--allowed-hosts {host!r}: a host name or address without port or path "
                                  "(an IPv6 address in brackets), or '*'")

    def with_host(self, host: str) -> "Limits":
        """These limits, answering requests that name `host` (where the proxy listens) too."""
        if host in ("0.0.0.0", "::") or host in self.allowed_hosts:
            return self
        return replace(self, allowed_hosts=(*self.allowed_hosts, f"[{host}]" if ":" in host else host))


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
        from corrhash.serve.hashing import model_files

        return cls(str(uri), model_files(model), index, dict(shown or {}))


class PayloadSearcher:
    """Answers validated requests (no HTTP, no Ray: the replica's core): the shared `serve.search.Searcher` over a
    payload's model and index."""

    def __init__(self, payload: Payload, limits: Limits):
        from corrhash.serve.hashing import from_files
        from corrhash.serve.search import Searcher

        self.core = Searcher(from_files(payload.model_files), payload.index, payload.shown, payload.model)
        self.model, self.index, self.uri, self.limits = self.core.model, self.core.index, self.core.uri, limits

    def health(self) -> dict:
        return self.core.health()

    def encode(self, request: dict) -> dict:
        """`{"texts": [...]}`, as EncodeRequest validated it."""
        return self.core.encode(request["texts"])

    def search(self, request: dict) -> dict:
        """`{"texts": [...], "k": n}` (k: 10 when left out), as SearchRequest validated it."""
        k = request.get("k", 10)
        return {"k": k, "results": self.core.search(request["texts"], k)}


# ---- the API's schema: what FastAPI validates and /openapi.json documents ---------------------------------------


class Hit(BaseModel):
    id: int | str = Field(description="the document's id in the index")
    distance: int = Field(description="Hamming distance between the text's code and the document's")
    labels: list[str] | None = Field(None, description="the document's labels (an index of a shard folder)")
    text: str | None = Field(None, description="the start of the document's text (an index of a text file)")


class QueryResult(BaseModel):
    query: int = Field(description="the text's position in the request")
    in_vocabulary: int = Field(description="how many of the model's vocabulary terms the text has")
    hits: list[Hit] = Field(description="the k nearest documents, nearest first")
    warning: str | None = Field(None, description="present when the text has no vocabulary term")


class SearchResponse(BaseModel):
    k: int
    results: list[QueryResult] = Field(description="one per text, in the request's order")


class EncodeResponse(BaseModel):
    bits: int
    codes: list[str] = Field(description="each text's code: its bits packed big-endian into bytes, as hex")
    in_vocabulary: list[int] = Field(description="how many of the model's vocabulary terms each text has")


class Health(BaseModel):
    status: str
    model: str = Field(description="the model's URI or folder")
    bits: int
    documents: int = Field(description="documents in the index")


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, naming the field")


ERROR_RESPONSES = {
    400: {"model": ErrorBody, "description": "the body is not JSON (or not UTF-8), or the Host header does not name "
                                             "this server"},
    408: {"model": ErrorBody, "description": "the body did not arrive within --body-timeout-s"},
    413: {"model": ErrorBody, "description": "the body is over --max-body-bytes"},
    415: {"model": ErrorBody, "description": "the body was not sent as Content-Type: application/json"},
    422: {"model": ErrorBody, "description": "the JSON is not a valid request (the error names the field)"},
}


def request_models(limits: Limits) -> tuple[type, type]:
    """(SearchRequest, EncodeRequest), bounded by this deployment's limits. Strict types, so `"k": "5"`,
    `"k": true` or `"texts": [3]` are refused rather than coerced, and no unknown field, so a misspelt `k` is
    not answered with the default silently."""
    from pydantic import AfterValidator, StrictInt, StrictStr, model_validator
    from pydantic_core import PydanticCustomError

    def not_blank(text: str) -> str:
        if not text.strip():
            raise PydanticCustomError("blank_text", "the text is empty or only whitespace")
        return text

    Texts = Annotated[list[Annotated[StrictStr, AfterValidator(not_blank)]],
                      Field(min_length=1, max_length=limits.max_texts,
                            description=f"1 to {limits.max_texts} texts, none empty or only whitespace")]

    class EncodeRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: Texts

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: Texts
        k: StrictInt = Field(10, ge=1, le=limits.max_k, description="how many hits per text")

        @model_validator(mode="after")
        def bounded_answer(self):
            if len(self.texts) * self.k > limits.max_hits:
                raise PydanticCustomError("too_many_hits", "{texts} texts x k {k} = {hits} hits; at most {most} per "
                                          "request", {"texts": len(self.texts), "k": self.k,
                                                      "hits": len(self.texts) * self.k, "most": limits.max_hits})
            return self

    return SearchRequest, EncodeRequest


# ---- FastAPI's errors in this API's words ---------------------------------------------------------------------


def validation_error(error: dict, fields: list[str], limits: Limits, body=None) -> tuple[int, str]:
    """(status, message) for one of FastAPI's validation errors (pydantic's, plus FastAPI's json_invalid and its
    body missing or not parsed as JSON)."""
    loc, kind, given = tuple(error.get("loc", ())), error.get("type"), error.get("input")
    where = loc[1:] if loc[:1] == ("body",) else loc
    if kind == "json_invalid":  # FastAPI's: loc ("body", position), the document in `body`
        position, doc = (where[0] if where else 0), body if isinstance(body, str) else ""
        line, column = doc.count("\n", 0, position) + 1, position - doc.rfind("\n", 0, position)
        reason = error.get("ctx", {}).get("error")
        return 400, f"request body is not valid JSON: {reason} (line {line}, column {column})"
    if kind == "too_many_hits":
        return 422, f"{error.get('msg')} (ask fewer texts or a smaller k)"
    if not where:  # the body as a whole
        if kind == "missing":  # FastAPI reads an empty body as no body
            return 400, "request body is not valid JSON: it is empty"
        if isinstance(given, (bytes, bytearray)):  # not parsed: it was not sent as JSON
            return 415, "request body is not read as JSON: send it with Content-Type: application/json"
        return 422, f"request body must be a JSON object, got {type(given).__name__}"
    name = where[0]
    if kind == "extra_forbidden":
        return 422, f"unknown field {name!r}; expected {', '.join(sorted(fields))}"
    if name == "k":
        return 422, f"'k' must be an integer from 1 to {limits.max_k}, got {json.dumps(given)}"
    if name == "texts" and len(where) == 1:
        if kind == "missing":
            return 422, "'texts' is missing: give a list of texts"
        if kind == "too_short":
            return 422, "'texts' is empty: give at least one text"
        if kind == "too_long":
            return 422, f"'texts' has {len(given)} texts; at most {limits.max_texts} per request"
        return 422, f"'texts' must be a list of strings, got {type(given).__name__}"
    if name == "texts":
        if kind == "blank_text":
            return 422, f"'texts'[{where[1]}] is empty"
        return 422, f"'texts'[{where[1]}] must be a string, got {type(given).__name__}"
    return 422, f"{'.'.join(map(str, where))}: {error.get('msg')}"


def unreadable_body(cause: BaseException | None) -> str | None:
    """Why a body could not be parsed, from the exception behind FastAPI's generic 400 ("There was an error
    parsing the body"); None when it is not one of these."""
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "request body is not valid JSON: nested too deeply"
    if isinstance(cause, ValueError):  # e.g. an integer of more digits than Python converts
        return f"request body is not valid JSON: {cause}"
    return None


def route_path(scope: dict) -> str:
    """The request's path inside the app: Serve keeps the full path and puts the route prefix in root_path."""
    path, prefix = scope.get("path", "/"), scope.get("root_path", "")
    return path[len(prefix):] if prefix and path.startswith(prefix) else path


LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def host_name(header: bytes) -> str:
    """The host of a Host header, without its port ("[::1]:8000" -> "[::1]", "Example.com:80" -> "example.com")."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    """ASGI middleware checking what a request is before anything parses it, answering the API's JSON errors:
    - its Host header must name this server (LOCAL_HOSTS, --host, --allowed-hosts), else 400: DNS rebinding;
    - its body must stay within `max_bytes` (413): at once when its Content-Length says so, else as it streams
      (a chunked body has no length), by counting what the app reads. FastAPI's own `max_body_size` would do the
      counting, but it answers a declared length over the limit with a plain-text "Content Too Large";
    - its body must arrive within `body_timeout_s` of the request (408): a replica takes a request before its
      body has come, so clients that send headers and then nothing would hold every slot for good."""

    def __init__(self, app, limits: "Limits"):
        self.app, self.limits = app, limits
        self.hosts = None if "*" in limits.allowed_hosts else {h.lower() for h in (*LOCAL_HOSTS,
                                                                                    *limits.allowed_hosts)}

    def problem(self, headers: dict) -> tuple[int, str] | None:
        host = headers.get(b"host")
        if self.hosts is not None and (host is None or host_name(host) not in self.hosts):
            shown = "no Host header" if host is None else f"Host {host.decode('latin-1')!r}"
            return 400, (f"{shown} is not a name of this server; requests must name one of "
                         f"{', '.join(sorted(self.hosts))} (jobs/serve.py --allowed-hosts adds names)")
        declared, limit = headers.get(b"content-length"), self.limits.max_body_bytes
        if declared is not None and not declared.isdigit():
            return 400, f"Content-Length {declared.decode('latin-1')!r} is not a number"
        if declared is not None and int(declared) > limit:
            return 413, f"request body of {int(declared)} bytes; at most {limit}"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import asyncio

        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse

        problem = self.problem(dict(scope.get("headers", ())))
        if problem:
            return await JSONResponse({"error": problem[1]}, status_code=problem[0])(scope, receive, send)
        loop, size, body_done = asyncio.get_running_loop(), 0, False
        deadline = loop.time() + self.limits.body_timeout_s

        async def guarded():
            nonlocal size, body_done
            if body_done:  # after the body, the app waits for the client to leave: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:  # an HTTPException: FastAPI lets it through to the app's handler
                raise HTTPException(408, f"request body not received within {self.limits.body_timeout_s:g} s "
                                         "(--body-timeout-s)") from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if size > self.limits.max_body_bytes:
                    raise HTTPException(413, f"request body over {self.limits.max_body_bytes} bytes")
            return message

        await self.app(scope, guarded, send)


def build_app(searcher: PayloadSearcher, timed: Callable | None = None):
    """The FastAPI app answering with `searcher`; `timed(n)` (SearchExporter.timed) wraps each batch of n texts."""
    from contextlib import nullcontext

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    limits, timed = searcher.limits, timed or (lambda n: nullcontext())
    SearchRequest, EncodeRequest = request_models(limits)
    fields = {"/search": list(SearchRequest.model_fields), "/encode": list(EncodeRequest.model_fields)}
    endpoints = ", ".join(f"{m} {p}" for p, m in ROUTES.items())
    app = FastAPI(
        title="corrhash", version=__version__,
        # "/search/" is a 404 naming the endpoints, not a redirect: a redirect's Location would be built without
        # Serve's route prefix in mind, and its body would not be JSON.
        redirect_slashes=False,
        # FastAPI's /docs and /redoc load their scripts from a CDN: blank offline, where a loopback service runs,
        # and a third party's script on a page that talks to the API. /docs is drawn here instead (api_page).
        docs_url=None, redoc_url=None,
        description=f"Semantic hashing search over the index of {searcher.uri}: each text's binary code and its "
                    "nearest documents by Hamming distance. Errors are `{\"error\": \"...\"}`.")

    async def http_error(request: Request, exc: HTTPException):
        path, status, message = route_path(request.scope), exc.status_code, exc.detail
        if status == 404:
            message = f"no endpoint {path}; endpoints: {endpoints} (API docs: GET /docs, GET /openapi.json)"
        elif status == 405:
            message = f"{request.method} {path}: use {(exc.headers or {}).get('Allow')}"
        elif status == 400:
            message = unreadable_body(exc.__cause__) or message
        return JSONResponse({"error": message}, status_code=status, headers=exc.headers)

    async def request_error(request: Request, exc: RequestValidationError):
        route = request.scope.get("route")
        status, message = validation_error(exc.errors()[0], fields.get(getattr(route, "path", ""), []), limits,
                                           exc.body)
        return JSONResponse({"error": message}, status_code=status)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_error)
    app.add_middleware(RequestGuard, limits=limits)

    def answer(what: str, work: Callable[[dict], dict], body: BaseModel) -> dict:
        # Synchronous on purpose (the endpoints are `async def`, so FastAPI does not move them to a thread pool):
        # the work is CPU-bound, and the index builds its faiss structure on its first search, so a replica
        # answers one request at a time.
        try:
            with timed(len(body.texts)):
                return work(body.model_dump())
        except Exception:  # noqa: BLE001 - the client gets a line, the replica's log the traceback
            logger.exception("corrhash serve: %s failed", what)
            raise HTTPException(500, INTERNAL_ERROR) from None

    # /search's answer is returned as a JSONResponse, which FastAPI passes on as it is: SearchResponse documents it
    # without validating it again: at 1000 texts x k = 1000 (a million hits) validating and dumping it through the
    # model took 9.8 s against 6.1 s for the same request answered this way (measured here, in process).
    @app.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES,
              summary="the nearest documents of each text")
    async def search(body: SearchRequest):
        return JSONResponse(answer("POST /search", searcher.search, body))

    @app.post("/encode", response_model=EncodeResponse, responses=ERROR_RESPONSES, summary="each text's code")
    async def encode(body: EncodeRequest):
        return answer("POST /encode", searcher.encode, body)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        from fastapi.responses import HTMLResponse

        return HTMLResponse(api_page(app.openapi(), request.scope.get("root_path", "")))

    @app.get("/healthz", response_model=Health, summary="the model and the index served")
    async def healthz():
        return searcher.health()

    return app


def api_page(schema: dict, prefix: str = "") -> str:
    """The API's documentation as one HTML page with no script and nothing fetched: each endpoint, its request
    fields (type, bounds, description) and its answers, from the OpenAPI schema (served whole at /openapi.json)."""
    from html import escape

    models = schema.get("components", {}).get("schemas", {})

    def fields(ref: str) -> str:
        model = models.get(ref.rsplit("/", 1)[-1], {})
        rows = []
        for name, spec in model.get("properties", {}).items():
            kind = spec.get("type") or " | ".join(part.get("type", "?") for part in spec.get("anyOf", []))
            bounds = ", ".join(f"{key} {spec[key]:g}" if isinstance(spec[key], float) else f"{key} {spec[key]}"
                               for key in ("minimum", "maximum", "minItems", "maxItems", "default") if key in spec)
            required = "required" if name in model.get("required", []) else "optional"
            rows.append(f"<tr><td><code>{escape(name)}</code></td><td>{escape(str(kind))}</td><td>{required}"
                        f"{', ' + escape(bounds) if bounds else ''}</td><td>{escape(spec.get('description', ''))}"
                        "</td></tr>")
        return "<table><tr><th>field</th><th>type</th><th></th><th></th></tr>" + "".join(rows) + "</table>"

    parts = [f"<h1>{escape(schema['info']['title'])} {escape(schema['info']['version'])}</h1>",
             f"<p>{escape(schema['info'].get('description', ''))}</p>",
             f"<p>The OpenAPI schema: <a href='{escape(prefix)}/openapi.json'>{escape(prefix)}/openapi.json</a></p>"]
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            parts.append(f"<h2>{method.upper()} {escape(prefix + path)}</h2><p>{escape(operation.get('summary', ''))}"
                         "</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in body:
                parts.append(fields(body["$ref"]))
            answers = "".join(f"<li>{escape(code)}: {escape(answer.get('description', ''))}</li>"
                              for code, answer in operation.get("responses", {}).items())
            parts.append(f"<ul>{answers}</ul>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>corrhash API</title><style>body{font-family:"
            "sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
            "table{border-collapse:collapse}</style></head><body>" + "".join(parts) + "</body></html>")


class SearchReplica:
    """The Serve deployment's class: one PayloadSearcher per replica and the FastAPI app over it. `run` wraps it with
    `serve.ingress()`, which calls `__serve_build_asgi_app__` on the replica after `__init__`: the app's request
    models need the limits the constructor is given (and ray.serve is imported only when serving)."""

    def __init__(self, payload: Payload, limits: Limits):
        from corrhash.launch.live import SearchExporter

        self.searcher = PayloadSearcher(payload, limits)
        self.exporter = SearchExporter(job=payload.model)

    def __serve_build_asgi_app__(self):
        return build_app(self.searcher, self.exporter.timed)


@dataclass(frozen=True)
class ServeOptions:
    """Where and how many: the Serve side of jobs/serve.py's options."""

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
    name: str = "corrhash"
    """Serve application name (an app of that name on the cluster is replaced)"""
    route_prefix: str = "/"
    """URL path the endpoints sit under (/search, or e.g. /corrhash/search); apps on one cluster need their own"""

    def __post_init__(self) -> None:
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


def application(payload: Payload, limits: Limits, replicas: int = 1, max_ongoing_requests: int = 8,
                replica_cpus: float = 1.0):
    """The Serve application: the `search` deployment bound to `payload` and `limits`."""
    from ray import serve

    # serve.ingress() without an app: the replica builds it (SearchReplica.__serve_build_asgi_app__).
    deployment = serve.deployment(serve.ingress()(SearchReplica), name="search").options(
        num_replicas=replicas, max_ongoing_requests=max_ongoing_requests, ray_actor_options={"num_cpus": replica_cpus})
    return deployment.bind(payload, limits)


class ServeArgs(BaseModel):
    """The arguments of `corrhash.commands.serve:build`, as a Serve config file (cluster/serve-config.yaml) or a KubeRay
    RayService (cluster/k8s/rayservice.yaml) gives them; the deployment's replicas and concurrency are the config's
    own `deployments` options."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="models:/NAME@champion, runs:/ID/model or a model folder")
    index: str = Field(description="a saved index (.npz, from `corrhash search --index-out`) built by that model")
    allow_other_model: bool = Field(False, description="serve an index built by another model, with a warning")
    max_body_bytes: int = Limits.max_body_bytes
    max_texts: int = Limits.max_texts
    max_k: int = Limits.max_k
    max_hits: int = Limits.max_hits
    body_timeout_s: float = Limits.body_timeout_s
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names answered besides localhost")

    def limits(self) -> Limits:
        return Limits(self.max_body_bytes, self.max_texts, self.max_k, self.max_hits, self.body_timeout_s,
                      tuple(self.allowed_hosts))


def run(payload: Payload, limits: Limits, options: ServeOptions) -> str:
    """Run the application (replacing one of the same name) with its replicas up; its base URL."""
    from ray import serve

    serve.run(application(payload, limits, options.replicas, options.max_ongoing_requests, options.replica_cpus),
              name=options.name, route_prefix=options.route_prefix)
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
