"""jobs/serve.py on the session's Ray head (token auth on): real HTTP on loopback, answers checked against the model.

A 16-bit model is trained here on the synthetic shards and registered in the session's MLflow server; the job
serves `models:/...@champion` with an index of the train split, one replica, on a free port. Every answer is
compared with what `corrhash.load(...)` computes in this process, every malformed request must get a 4xx JSON
error (never a traceback), and SIGTERM must delete the app and shut Serve down on the shared head. The same FastAPI
app is also driven in this process, through ASGI without Ray, so its validation and error answers are checked by
the fast tests too.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import corrhash
from badinput import assert_named_error, run_job
from bench.serve_load import percentile, run_load_test
from corrhash.artifact import save_model
from corrhash.data import TfidfShards
from corrhash.errors import ConfigError
from corrhash.models import ModelConfig
from corrhash.tracking.runs import ensure_experiment, log_hashing_model
from corrhash.train import TrainConfig, fit
from services import free_port, stop

REPO = Path(__file__).resolve().parents[1]
MAX_BODY = 64 * 1024  # small, so an oversized body is cheap to send
BODY_TIMEOUT_S = 3  # short, so clients that send no body are cut off quickly
REGISTERED = "serve-test"


@pytest.fixture(scope="module")
def trained(shards_synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-model")
    shards = TfidfShards(shards_synthetic)
    result = fit(ModelConfig(name="nash", bits=16, hidden=32), TrainConfig(epochs=2, batch_size=40, eval_k=10),
                 shards.split("train"), val=shards.split("val"))
    vocab = json.loads((shards_synthetic / "vocab.json").read_text())
    model_dir = save_model(folder / "model", result.model, vocab, {"label_names": shards.label_names})
    texts = [json.loads(line)["text"] for line in (shards_synthetic.parent / "corpus.jsonl").read_text().splitlines()]
    return SimpleNamespace(dir=model_dir, shards=shards, texts=texts)


def registered_uri(tracking_uri: str, model_dir: Path) -> str:
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(ensure_experiment(client, "serve-test")).info.run_id
    try:
        version = log_hashing_model(tracking_uri, run_id, model_dir, ["t0w1 common2"], registered_name=REGISTERED)
    finally:
        mlflow.set_tracking_uri(None)  # log_hashing_model sets it process-wide
    client.set_registered_model_alias(REGISTERED, "champion", version.registered_model_version)
    client.set_terminated(run_id)
    return f"models:/{REGISTERED}@champion"


@pytest.fixture(scope="module")
def served(cluster, trained, tmp_path_factory):
    """jobs/serve.py running on the session head, its corpus hashed there on Ray Data (--hash-actors): the URL, the
    process, and the model and the index one process builds, to compare with."""
    uri = registered_uri(cluster["mlflow"], trained.dir)
    port, log = free_port(), tmp_path_factory.mktemp("serve-job") / "serve.log"
    env = dict(cluster["head"].client_env(), MLFLOW_TRACKING_URI=cluster["mlflow"], OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "serve.py"), "--model", uri, "--corpus", str(trained.shards.root),
         "--address", cluster["head"].gcs, "--port", str(port), "--replicas", "1", "--max-body-bytes", str(MAX_BODY),
         "--hash-actors", "1", "--body-timeout-s", str(BODY_TIMEOUT_S)],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(process, log, timeout=150)
        assert "on Ray Data: " in log.read_text()
        model = corrhash.load(trained.dir)
        train = trained.shards.split("train")
        index = model.index(features=train.features, ids=train.doc_ids)
        yield SimpleNamespace(url=url, port=port, process=process, log=log, model=model, index=index,
                              texts=trained.texts, label_names=trained.shards.label_names)
    finally:
        stop(process, timeout=60)


def wait_serving(process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jobs/serve.py exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        if "serving " in log.read_text():
            return
        time.sleep(0.5)
    raise TimeoutError(f"jobs/serve.py not serving after {timeout}s:\n{log.read_text()[-4000:]}")


def call(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         chunked: bool = False) -> tuple[int, dict, http.client.HTTPMessage]:
    """(status, JSON answer, headers) of one real HTTP request; the answer must be JSON and hold no traceback."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body, headers or {"Content-Type": "application/json"},
                           encode_chunked=chunked)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    text = raw.decode("utf-8", errors="replace")
    assert "Traceback" not in text, text
    return response.status, json.loads(raw), response.headers  # case-insensitive lookups


def post(url: str, path: str, payload) -> tuple[int, dict]:
    status, answer, _ = call(url, "POST", path, json.dumps(payload).encode())
    return status, answer


@pytest.mark.cluster
def test_loading_a_registered_model_in_python_prints_nothing(served, cluster, capfd, monkeypatch):
    """The README's `corrhash.load("models:/...")` from a tracking server printed MLflow's per-file download bar,
    one stderr line redrawn for each of the model's files (ecosystem review t4, N10): a library call is quiet."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cluster["mlflow"])
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    capfd.readouterr()
    model = corrhash.load(f"models:/{REGISTERED}@champion")
    captured = capfd.readouterr()
    assert model.bits == 16 and "Downloading artifacts" not in captured.err, captured.err[-2000:]
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # put back as it was


@pytest.mark.cluster
def test_healthz_reports_the_model_and_the_index(served):
    status, answer, _ = call(served.url, "GET", "/healthz")
    assert status == 200
    assert answer == {"status": "ok", "model": f"models:/{REGISTERED}@champion", "bits": 16,
                      "documents": len(served.index)}


@pytest.mark.cluster
def test_search_answers_what_the_model_finds(served):
    texts = served.texts[:3] + served.texts[400:402] + ["nothing from the vocabulary here"]
    status, answer = post(served.url, "/search", {"texts": texts, "k": 7})
    assert status == 200, answer
    ids, distances = served.model.search(served.index, texts, 7)
    features = served.model.featurize(texts)
    assert answer["k"] == 7 and len(answer["results"]) == len(texts)
    for j, result in enumerate(answer["results"]):
        assert result["query"] == j
        assert result["in_vocabulary"] == features[j].nnz
        assert [h["id"] for h in result["hits"]] == ids[j].tolist()
        assert [h["distance"] for h in result["hits"]] == distances[j].tolist()
        assert all(set(h["labels"]) <= set(served.label_names) and h["labels"] for h in result["hits"])
    assert "warning" not in answer["results"][0]
    assert answer["results"][-1]["in_vocabulary"] == 0 and "arbitrary" in answer["results"][-1]["warning"]
    # the first query is a train document: it finds itself at distance 0
    assert answer["results"][0]["hits"][0]["distance"] == 0


@pytest.mark.cluster
def test_encode_answers_the_models_codes(served):
    texts = served.texts[100:110]
    status, answer = post(served.url, "/encode", {"texts": texts})
    assert status == 200, answer
    assert answer["bits"] == 16
    assert answer["codes"] == [row.tobytes().hex() for row in served.model.encode(texts)]
    assert answer["in_vocabulary"] == [row.nnz for row in served.model.featurize(texts)]


BAD_REQUESTS = [  # (method, path, body, status, words the error must contain)
    ("POST", "/search", b'{"texts": ["a b", }', 400, "not valid JSON"),
    ("POST", "/search", b"", 400, "not valid JSON"),
    ("POST", "/search", b'{"texts": ["\xff\xfe"]}', 400, "not UTF-8"),
    ("POST", "/search", b'{"texts": ["t0w1"], "k": 1' + b"0" * 5000 + b"}", 400, "not valid JSON"),
    ("POST", "/search", b"[" * 50_000, 400, "not valid JSON"),
    ("POST", "/search", b'["t0w1"]', 422, "JSON object"),
    ("POST", "/search", b"{}", 422, "'texts' is missing"),
    ("POST", "/search", b'{"texts": []}', 422, "'texts' is empty"),
    ("POST", "/search", b'{"texts": ["t0w1", "   "]}', 422, "'texts'[1] is empty"),
    ("POST", "/encode", b'{"texts": [""]}', 422, "'texts'[0] is empty"),
    ("POST", "/search", b'{"texts": "t0w1 t0w2"}', 422, "'texts' must be a list"),
    ("POST", "/encode", b'{"texts": [3]}', 422, "'texts'[0] must be a string"),
    ("POST", "/search", json.dumps({"texts": ["t0w1"] * 1001}).encode(), 422, "at most 1000"),
    ("POST", "/search", b'{"texts": ["t0w1"], "k": 0}', 422, "'k' must be an integer from 1 to 1000"),
    ("POST", "/search", b'{"texts": ["t0w1"], "k": 1001}', 422, "'k'"),
    ("POST", "/search", b'{"texts": ["t0w1"], "k": "5"}', 422, "'k'"),
    ("POST", "/search", b'{"texts": ["t0w1"], "k": true}', 422, "'k'"),
    ("POST", "/search", b'{"texts": ["t0w1"], "kk": 5}', 422, "unknown field 'kk'"),
    ("POST", "/encode", b'{"texts": ["t0w1"], "k": 5}', 422, "unknown field 'k'"),
    ("POST", "/search", b'{"texts": ["t0w1"]}' + b" " * MAX_BODY, 413, "at most"),
    ("GET", "/search", None, 405, "use POST"),
    ("POST", "/healthz", b"{}", 405, "use GET"),
    ("POST", "/nowhere", b"{}", 404, "no endpoint /nowhere"),
]


@pytest.mark.cluster
@pytest.mark.parametrize("method, path, body, status, words", BAD_REQUESTS,
                         ids=[f"{m} {p} {s} {w}" for m, p, _, s, w in BAD_REQUESTS])
def test_a_malformed_request_gets_a_4xx_json_error(served, method, path, body, status, words):
    got, answer, headers = call(served.url, method, path, body)
    assert got == status, answer
    assert set(answer) == {"error"} and words in answer["error"], answer
    if status == 405:
        assert headers["Allow"] == ("GET" if path == "/healthz" else "POST")


@pytest.mark.cluster
def test_an_oversized_chunked_body_is_refused_while_it_streams(served):
    """No Content-Length to check first: the replica counts the chunks and stops at the limit."""
    chunks = iter([b'{"texts": ["', b"t0w1 " * (MAX_BODY // 4), b'"]}'])
    got, answer, _ = call(served.url, "POST", "/search", chunks, chunked=True)
    assert got == 413 and "over" in answer["error"], answer


@pytest.mark.cluster
def test_the_api_documents_itself_and_validation_answers_422(served):
    """FastAPI's own /openapi.json and /docs, through Serve's proxy; a malformed body is refused by the request
    model (the schema states the deployment's limits) with the API's JSON error."""
    status, schema, _ = call(served.url, "GET", "/openapi.json")
    assert status == 200
    assert {path: set(ops) for path, ops in schema["paths"].items()} == \
        {"/search": {"post"}, "/encode": {"post"}, "/healthz": {"get"}}
    assert schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]["maximum"] == 1000
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        connection.request("GET", "/docs")
        response = connection.getresponse()
        page = response.read().decode()
    finally:
        connection.close()
    # Drawn by the app with nothing fetched, so it reads offline (ecosystem review t4, N5: Swagger UI from a CDN).
    assert response.status == 200 and "/openapi.json" in page and "POST /search" in page
    assert "<script" not in page and "http" not in page.replace("/openapi.json", "")
    got, answer, _ = call(served.url, "POST", "/search", b'{"texts": ["t0w1"], "k": 5000}')
    assert (got, answer) == (422, {"error": "'k' must be an integer from 1 to 1000, got 5000"})


def idle_client(url: str) -> socket.socket:
    """A client that sends a request's headers and the first byte of its body, and then nothing (review S1)."""
    host, port = url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=60)
    client.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 1000\r\n\r\n{")
    return client


@pytest.mark.cluster
@pytest.mark.parametrize("idle", [8, 32])
def test_idle_clients_do_not_stop_others_from_being_answered(served, idle):
    """--max-ongoing-requests (8) clients sending no body held every replica slot for good (reliability review t4,
    S1): now each is cut off with a 408 after --body-timeout-s, and a normal client is answered meanwhile."""
    clients = [idle_client(served.url) for _ in range(idle)]
    try:
        time.sleep(0.5)
        started = time.monotonic()
        status, answer = post(served.url, "/search", {"texts": served.texts[:1], "k": 3})
        assert status == 200 and len(answer["results"][0]["hits"]) == 3
        assert time.monotonic() - started < BODY_TIMEOUT_S + 15
        for client in clients:
            reply = b""
            while b"--body-timeout-s" not in reply and (chunk := client.recv(4096)):  # headers and body may part
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"--body-timeout-s" in reply, reply[:300]
    finally:
        for client in clients:
            client.close()


def serve_rss_mib() -> dict[str, float]:
    """Resident memory (MiB) of this app's Serve replica and of Serve's HTTP proxy, found by their process titles."""
    found: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for part, marker in (("replica", "ServeReplica:corrhash:"), ("proxy", "ProxyActor")):
            if marker in title and "VmRSS" in status:
                rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
                found[part] = max(found.get(part, 0.0), rss)
    return found


@pytest.mark.cluster
def test_the_largest_allowed_answer_is_bounded_and_a_larger_one_refused(served):
    """texts x k is capped (--max-hits, default 100,000; review S2: 1000 texts x k 1000 answered 91 MB): the
    largest request allowed answers at most ~100 bytes a hit (10 MB), three of them grow neither the replica's nor
    the proxy's memory by 300 MB, and one hit more is a 422 naming the product."""
    texts, k = [f"t{i % 8}w1 t{i % 8}w2" for i in range(1000)], 100  # short: the body stays under --max-body-bytes
    before = serve_rss_mib()
    for _ in range(3):
        status, answer, headers = call(served.url, "POST", "/search", json.dumps({"texts": texts, "k": k}).encode())
        hits = sum(len(result["hits"]) for result in answer["results"])
        assert status == 200 and hits == 1000 * min(k, len(served.index))
        assert int(headers["content-length"]) < 100 * 100_000
    after = serve_rss_mib()
    print(json.dumps({"rss_mib_before": before, "rss_mib_after": after}))
    # The review's 91 MB answers took the proxy from 312 MB to 1.03 GB for good; the largest now allowed may not.
    assert set(before) == {"replica", "proxy"} and all(after[p] - before[p] < 300 for p in before), (before, after)
    status, answer = post(served.url, "/search", {"texts": texts, "k": k + 1})
    assert (status, answer) == (422, {"error": "1000 texts x k 101 = 101000 hits; at most 100000 per request (ask "
                                               "fewer texts or a smaller k)"})


@pytest.mark.cluster
def test_a_request_naming_another_host_is_refused(served):
    """DNS rebinding (review S4): a page of evil.example whose name resolves to 127.0.0.1 sends Host: evil.example."""
    status, answer, _ = call(served.url, "POST", "/search", json.dumps({"texts": ["t0w1"], "k": 1}).encode(),
                             {"Content-Type": "application/json", "Host": "evil.example:80"})
    assert status == 400 and "Host 'evil.example:80' is not a name of this server" in answer["error"]
    assert call(served.url, "GET", "/healthz", headers={"Host": f"localhost:{served.port}"})[0] == 200


@pytest.mark.cluster
def test_a_bounded_load_test_has_no_errors(served):
    result = run_load_test(f"{served.url}/search", served.texts, requests=200, concurrency=4, duration_s=60)
    print(json.dumps(result))
    assert result["errors"] == 0, result["error_samples"]
    assert result["ok"] == result["sent"] == 200 and result["stopped_by"] == "count"
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    capped = run_load_test(f"{served.url}/encode", served.texts, requests=10**6, concurrency=2, duration_s=1.0)
    assert capped["stopped_by"] == "duration" and capped["errors"] == 0 and capped["seconds"] < 10


@pytest.mark.cluster
def test_a_second_app_shares_the_port_under_its_own_prefix(served, cluster, trained, tmp_path):
    """Serve's HTTP options are fixed while it runs: a second app asking for another port (where no one would
    reach it) is refused, naming the port Serve listens on; under its own --route-prefix it runs beside the
    first, and stopping it leaves the first app and Serve running."""
    served.index.save(tmp_path / "index.npz")
    command = [sys.executable, str(REPO / "jobs" / "serve.py"), "--model", str(trained.dir), "--index",
               str(tmp_path / "index.npz"), "--address", cluster["head"].gcs, "--name", "second"]
    refused = subprocess.run(command + ["--port", str(free_port())], env=cluster["head"].client_env(),
                             capture_output=True, text=True, timeout=120)
    assert_named_error(refused.returncode, refused.stderr, f"127.0.0.1:{served.port}", f"--port {served.port}")

    log = tmp_path / "second.log"
    second = subprocess.Popen(command + ["--port", str(served.port), "--route-prefix", "/second",
                                         "--replica-cpus", "0.5"],
                              env=cluster["head"].client_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_serving(second, log, timeout=120)
        status, health, _ = call(served.url, "GET", "/second/healthz")
        assert status == 200 and health["model"] == str(trained.dir) and health["documents"] == len(served.index)
        status, answer = post(served.url, "/second/search", {"texts": served.texts[:2], "k": 3})
        assert status == 200 and [set(hit) for hit in answer["results"][0]["hits"]] == [{"id", "distance"}] * 3
        second.send_signal(signal.SIGTERM)
        assert second.wait(90) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        stop(second)
    status, health, _ = call(served.url, "GET", "/healthz")  # the first app, untouched
    assert status == 200 and health["model"] == f"models:/{REGISTERED}@champion"
    status, answer, _ = call(served.url, "GET", "/second/healthz")  # now the first app's path, which it lacks
    assert status == 404 and "no endpoint /second/healthz" in answer["error"]


@pytest.mark.cluster
def test_sigterm_deletes_the_app_and_shuts_serve_down(served):
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(90) == 128 + signal.SIGTERM, served.log.read_text()[-3000:]
    assert "deleting the Serve app 'corrhash'" in served.log.read_text()
    with pytest.raises(OSError):  # nothing listens there any more: Serve's proxy is gone from the shared head
        call(served.url, "GET", "/healthz")


# ---- the same app in this process: ASGI without Ray or a port --------------------------------------------------


@pytest.fixture(scope="module")
def app(trained):
    from corrhash.serve.app import Limits, Payload, PayloadSearcher, build_app

    model = corrhash.load(trained.dir)
    train = trained.shards.split("train")
    index = model.index(features=train.features, ids=train.doc_ids)
    shown = {doc_id: {"labels": ["x"]} for doc_id in train.doc_ids.tolist()}
    return build_app(PayloadSearcher(Payload.of(str(trained.dir), model, index, shown),
                                     Limits(max_body_bytes=MAX_BODY)))


def asgi(app, method: str, path: str, body=b"", headers: dict | None = None, root_path: str = "") \
        -> tuple[int, dict, dict]:
    """(status, JSON answer, headers) of one request handed to the ASGI app as Serve's proxy hands it: the path
    in full, the route prefix in root_path; a body given as an iterator of chunks goes without Content-Length."""
    chunks = [body or b""] if isinstance(body, (bytes, type(None))) else list(body)
    headers = {"content-type": "application/json", "host": "127.0.0.1:8000", **(headers or {})}
    if isinstance(body, (bytes, type(None))):
        headers.setdefault("content-length", str(len(body or b"")))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": root_path + path, "raw_path": (root_path + path).encode(), "root_path": root_path,
             "query_string": b"", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent: list[dict] = []

    async def exchange():
        done = asyncio.Event()
        pending = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
                   for i, chunk in enumerate(chunks)]

        async def receive():
            if pending:
                return pending.pop(0)
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(scope, receive, send)

    asyncio.run(exchange())
    start = next(m for m in sent if m["type"] == "http.response.start")
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"Traceback" not in raw, raw
    answer_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    is_json = "json" in answer_headers.get("content-type", "")
    return start["status"], (json.loads(raw) if is_json else raw.decode()), answer_headers


@pytest.mark.parametrize("method, path, body, status, words", BAD_REQUESTS,
                         ids=[f"{m} {p} {s} {w}" for m, p, _, s, w in BAD_REQUESTS])
def test_the_app_answers_a_malformed_request_with_a_4xx_json_error(app, method, path, body, status, words):
    got, answer, headers = asgi(app, method, path, body)
    assert got == status, answer
    assert set(answer) == {"error"} and words in answer["error"], answer
    if status == 405:
        assert headers["allow"] == ("GET" if path == "/healthz" else "POST")


def test_the_app_refuses_an_oversized_body_while_it_streams_and_a_body_not_sent_as_json(app):
    got, answer, _ = asgi(app, "POST", "/search", iter([b'{"texts": ["', b"t0w1 " * (MAX_BODY // 4), b'"]}']))
    assert (got, answer) == (413, {"error": f"request body over {MAX_BODY} bytes"})
    got, answer, _ = asgi(app, "POST", "/search", b'{"texts": ["t0w1"]}', {"content-type": "text/plain"})
    assert got == 415 and "Content-Type: application/json" in answer["error"], answer
    got, answer, _ = asgi(app, "POST", "/search/", b'{"texts": ["t0w1"]}')
    assert got == 404 and "POST /search, POST /encode, GET /healthz" in answer["error"], answer


def test_the_app_validates_through_fastapi_and_documents_the_endpoints(app, monkeypatch):
    """/openapi.json names the three endpoints, their request models (bounded by the deployment's limits) and
    their answers; a malformed body is refused by FastAPI's validation (RequestValidationError), answered 422
    in the API's JSON error form, under a route prefix too."""
    from fastapi.exceptions import RequestValidationError

    status, schema, _ = asgi(app, "GET", "/openapi.json", None)
    assert status == 200 and schema["info"]["title"] == "corrhash"
    assert {path: set(ops) for path, ops in schema["paths"].items()} == \
        {"/search": {"post"}, "/encode": {"post"}, "/healthz": {"get"}}
    models = schema["components"]["schemas"]
    assert models["SearchRequest"]["properties"]["k"] | {"maximum": 1000, "minimum": 1, "default": 10} == \
        models["SearchRequest"]["properties"]["k"]
    assert models["SearchRequest"]["properties"]["texts"]["maxItems"] == 1000
    assert models["SearchRequest"]["additionalProperties"] is False
    search = schema["paths"]["/search"]["post"]
    assert search["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchRequest")
    assert search["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResponse")
    assert search["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    status, page, headers = asgi(app, "GET", "/docs", None)
    assert status == 200 and headers["content-type"].startswith("text/html") and "/openapi.json" in page
    assert "<script" not in page and "cdn" not in page
    assert "<code>k</code></td><td>integer</td><td>optional, minimum 1, maximum 1000, default 10" in page
    assert "<h2>POST /search</h2>" in page and "422: the JSON is not a valid request" in page
    assert asgi(app, "GET", "/redoc", None)[0] == 404

    seen = []
    handler = app.exception_handlers[RequestValidationError]

    async def spy(request, exc):
        seen.append(exc.errors()[0]["type"])
        return await handler(request, exc)

    monkeypatch.setitem(app.exception_handlers, RequestValidationError, spy)
    app.middleware_stack = None  # Starlette builds its stack, and binds the handlers, on the first request
    got, answer, _ = asgi(app, "POST", "/search", b'{"texts": ["t0w1"], "k": 5000}', root_path="/second")
    assert (got, answer) == (422, {"error": "'k' must be an integer from 1 to 1000, got 5000"})
    got, answer, _ = asgi(app, "POST", "/encode", b'{"texts": ["t0w1", 7]}')
    assert (got, answer) == (422, {"error": "'texts'[1] must be a string, got int"})
    assert seen == ["less_than_equal", "string_type"]
    app.middleware_stack = None


def test_the_app_answers_only_requests_naming_this_server(app):
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000"):
        assert asgi(app, "GET", "/healthz", None, {"host": host})[0] == 200, host
    for host in ("evil.example", "127.0.0.1.evil.example:8000", "[::2]"):
        status, answer, _ = asgi(app, "GET", "/healthz", None, {"host": host})
        assert status == 400 and f"Host {host!r} is not a name of this server" in answer["error"], answer


def test_hosts_and_answer_size_are_options(trained):
    from corrhash.serve.app import Limits, Payload, PayloadSearcher, build_app

    model = corrhash.load(trained.dir)
    train = trained.shards.split("train")
    payload = Payload.of(str(trained.dir), model, model.index(features=train.features, ids=train.doc_ids))
    limits = Limits(max_hits=20, allowed_hosts=("search.example",)).with_host("10.0.0.5")
    assert limits.allowed_hosts == ("search.example", "10.0.0.5") and Limits().with_host("0.0.0.0") == Limits()
    local = build_app(PayloadSearcher(payload, limits))
    assert asgi(local, "GET", "/healthz", None, {"host": "search.example:443"})[0] == 200
    assert asgi(local, "GET", "/healthz", None, {"host": "10.0.0.5:8000"})[0] == 200
    status, answer, _ = asgi(local, "POST", "/search", json.dumps({"texts": ["a", "b", "c"], "k": 7}).encode())
    assert (status, answer) == (422, {"error": "3 texts x k 7 = 21 hits; at most 20 per request (ask fewer texts or "
                                               "a smaller k)"})
    anyone = build_app(PayloadSearcher(payload, Limits(allowed_hosts=("*",))))
    assert asgi(anyone, "GET", "/healthz", None, {"host": "anything.example"})[0] == 200


def test_the_application_builder_loads_the_model_and_its_index(trained, tmp_path):
    """corrhash.commands.serve:build, what `serve run/deploy` and a RayService call with a config's args (N8): the model
    and its saved index with jobs/serve.py's checks, the limits from the args."""
    from ray.serve import Application

    from corrhash.retrieval.index import HammingIndex, OtherModelError
    from corrhash.commands.serve import build

    model = corrhash.load(trained.dir)
    train = trained.shards.split("train")
    model.index(features=train.features, ids=train.doc_ids).save(tmp_path / "idx.npz")
    app = build({"model": str(trained.dir), "index": str(tmp_path / "idx.npz"), "max_hits": 50,
                 "allowed_hosts": ["search.example"]})
    assert isinstance(app, Application)
    HammingIndex(model.index(features=train.features[:3], ids=[1, 2, 3]).codes, [1, 2, 3], 16).save(tmp_path / "x.npz")
    with pytest.raises(OtherModelError, match="x.npz"):
        build({"model": str(trained.dir), "index": str(tmp_path / "x.npz")})
    with pytest.raises(Exception, match="max_hit"):
        build({"model": str(trained.dir), "index": str(tmp_path / "idx.npz"), "max_hit": 5})


def test_a_body_that_does_not_arrive_is_cut_off(trained):
    """The body's deadline runs from the request: a client that sends its headers and then nothing gets a 408."""
    from corrhash.serve.app import Limits, Payload, PayloadSearcher, build_app

    model = corrhash.load(trained.dir)
    train = trained.shards.split("train")
    payload = Payload.of(str(trained.dir), model, model.index(features=train.features, ids=train.doc_ids))
    app = build_app(PayloadSearcher(payload, Limits(body_timeout_s=0.3)))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/search", "raw_path": b"/search", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", b"99")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent = []

    async def exchange():
        first = [{"type": "http.request", "body": b'{"te', "more_body": True}]

        async def receive():
            if first:
                return first.pop()
            await asyncio.sleep(3600)  # the rest of the body never comes

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(app(scope, receive, send), 10)

    started = time.monotonic()
    asyncio.run(exchange())
    assert time.monotonic() - started < 5
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"]) == {"error": "request body not received within 0.3 s (--body-timeout-s)"}
    with pytest.raises(ConfigError, match="--body-timeout-s 0"):
        Limits(body_timeout_s=0)
    with pytest.raises(ConfigError, match="--allowed-hosts 'a.example:80'"):
        Limits(allowed_hosts=("a.example:80",))


def test_the_app_answers_as_the_searcher_does(app):
    status, health, _ = asgi(app, "GET", "/healthz", None, root_path="/second")
    assert status == 200 and health["bits"] == 16 and health["status"] == "ok"
    status, answer, _ = asgi(app, "POST", "/search", json.dumps({"texts": ["t0w1 t0w2", "zzz"], "k": 3}).encode())
    assert status == 200 and answer["k"] == 3 and [len(r["hits"]) for r in answer["results"]] == [3, 3]
    assert [set(hit) for hit in answer["results"][0]["hits"]] == [{"id", "distance", "labels"}] * 3
    assert "warning" not in answer["results"][0] and "arbitrary" in answer["results"][1]["warning"]
    status, answer, _ = asgi(app, "POST", "/encode", b'{"texts": ["t0w1"]}')
    assert status == 200 and answer["bits"] == 16 and len(answer["codes"][0]) == 4


# ---- bad options: exit 2 naming the option, before Ray is touched ---------------------------------------------


def test_bad_options_are_named_errors(trained, tmp_path, capsys):
    model = str(trained.dir)
    assert_named_error(*run_job("serve", ["--model", model], capsys), "--index", "--corpus")
    assert_named_error(*run_job("serve", ["--model", model, "--index", tmp_path / "i.npz", "--port", "0"], capsys),
                       "--port 0")
    assert_named_error(*run_job("serve", ["--model", model, "--index", "i.npz", "--max-k", "0"], capsys), "--max-k")
    assert_named_error(*run_job("serve", ["--model", model, "--index", "i.npz", "--route-prefix", "x/"], capsys),
                       "--route-prefix")
    assert_named_error(*run_job("serve", ["--model", tmp_path / "none", "--index", "i.npz"], capsys),
                       tmp_path / "none")
    assert_named_error(*run_job("serve", ["--model", model, "--index", tmp_path / "i.npz"], capsys),
                       tmp_path / "i.npz")
    assert_named_error(*run_job("serve", ["--model", model, "--corpus", trained.shards.root, "--hash-actors", "-1"],
                                capsys), "--hash-actors -1")
    (tmp_path / "docs.jsonl").write_text('{"text": "a b"}\n')
    assert_named_error(*run_job("serve", ["--model", model, "--corpus", tmp_path / "docs.jsonl", "--hash-actors", "1"],
                                capsys), "--hash-actors 1", "prepared shard folder")


def test_an_index_of_other_codes_is_refused(trained, tmp_path, capsys):
    from corrhash.retrieval.index import HammingIndex
    import numpy as np

    HammingIndex(np.zeros((3, 4), np.uint8), [1, 2, 3], 32).save(tmp_path / "i.npz")
    assert_named_error(*run_job("serve", ["--model", str(trained.dir), "--index", tmp_path / "i.npz"], capsys),
                       tmp_path / "i.npz", "32-bit")


# ---- the load test's own accounting, without a server ----------------------------------------------------------


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) != percentile([], 50)  # nan


def test_a_load_test_against_nothing_counts_every_request_as_an_error():
    result = run_load_test(f"http://127.0.0.1:{free_port()}/search", ["t0w1"], requests=6, concurrency=2,
                           duration_s=30)
    assert (result["sent"], result["ok"], result["errors"], result["stopped_by"]) == (6, 0, 6, "count")
    assert "ConnectionRefusedError" in result["error_samples"][0]
    with pytest.raises(ValueError, match="texts"):
        run_load_test("http://127.0.0.1:1/search", [], requests=1, concurrency=1, duration_s=1)
    with pytest.raises(ValueError, match="http://"):
        run_load_test("127.0.0.1:1/search", ["a"], requests=1, concurrency=1, duration_s=1)
