"""A bounded load test of the Serve app (jobs/serve.py): a fixed number of POSTs, cut short at a duration.

`concurrency` threads, each on its own keep-alive HTTP connection, take request numbers from a shared
counter until `requests` have been sent or `duration_s` has passed, whichever comes first; a request in
flight at the deadline still finishes and counts. Latency is one request's round trip as the client sees
it. An error is any answer other than 200 with a JSON body, or a failed connection; the benchmark's target
is zero. Standard library only, so it runs wherever the benchmark does.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from urllib.parse import urlsplit

ERROR_SAMPLES = 5  # the first few error messages are kept, enough to see what went wrong


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ascending values; nan for none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_load_test(url: str, texts: list[str], requests: int, concurrency: int, duration_s: float, *,
                  k: int = 10, texts_per_request: int = 1, timeout_s: float = 30.0) -> dict:
    """POST `{"texts": [...], "k": k}` to `url` (an endpoint, e.g. http://127.0.0.1:8000/search), cycling
    through `texts`; returns counts, requests/s and queries/s, and p50/p99/max latency in milliseconds.
    `k` is sent only to /search (/encode refuses fields it does not take)."""
    if not texts:
        raise ValueError("texts: give at least one text to send")
    if requests < 1 or concurrency < 1 or texts_per_request < 1:
        raise ValueError("requests, concurrency and texts_per_request must be at least 1")
    if not duration_s > 0:
        raise ValueError(f"duration_s {duration_s}: must be more than 0")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url}: expected an http:// URL of an endpoint")
    path = parts.path or "/"
    send_k = not path.rstrip("/").endswith("/encode")

    counter, lock = iter(range(requests)), threading.Lock()
    latencies, errors, samples = [], [0], []
    started = time.perf_counter()
    deadline = started + duration_s

    def body(number: int) -> bytes:
        first = number * texts_per_request
        batch = [texts[(first + j) % len(texts)] for j in range(texts_per_request)]
        return json.dumps({"texts": batch, **({"k": k} if send_k else {})}).encode()

    def failed(message: str) -> None:
        with lock:
            errors[0] += 1
            if len(samples) < ERROR_SAMPLES:
                samples.append(message)

    def worker() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                payload = body(number)
                sent = time.perf_counter()
                try:
                    connection.request("POST", path, payload, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    answer = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()  # reconnects on the next request
                    failed(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - sent
                if response.status != 200:
                    failed(f"HTTP {response.status}: {answer[:200].decode(errors='replace')}")
                    continue
                try:
                    json.loads(answer)
                except ValueError:
                    failed(f"HTTP 200 with a body that is not JSON: {answer[:200]!r}")
                    continue
                with lock:
                    latencies.append(elapsed)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = len(latencies)
    sent = done + errors[0]
    ms = sorted(1000 * s for s in latencies)
    return {"url": url, "requests": requests, "sent": sent, "ok": done, "errors": errors[0],
            "error_samples": samples, "concurrency": concurrency, "texts_per_request": texts_per_request,
            "duration_cap_s": duration_s, "seconds": wall,
            "stopped_by": "count" if sent >= requests else "duration",
            "requests_per_s": done / wall, "queries_per_s": done * texts_per_request / wall,
            "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": ms[-1] if ms else math.nan}
