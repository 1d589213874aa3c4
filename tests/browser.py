"""A tiny headless-Chromium driver over the Chrome DevTools Protocol, for tests that load a page from disk.

`open_page(path, workdir)` starts `chromium --headless=new` on the file with its own profile folder and an
ephemeral debugging port (read back from the profile's DevToolsActivePort file), connects to the page target's
WebSocket, waits for the page and its images to load, and yields a `Page` that evaluates JavaScript and takes
screenshots. The browser is stopped by its process group when the block ends, whatever happened.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import websocket  # the websocket-client package

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
START_TIMEOUT_S = 30.0


def chromium() -> str | None:
    """The Chromium executable on PATH (the Debian package installs /usr/bin/chromium), or None."""
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


class Page:
    """One page target: `call` sends a DevTools command and returns its result."""

    def __init__(self, socket: websocket.WebSocket):
        self.socket = socket
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; the reply carries our id
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (an exception in it raises)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page did not reach {expression!r} in {timeout:.0f} s")
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        """A PNG of the whole page, beyond the viewport."""
        return base64.b64decode(self.call("Page.captureScreenshot", format="png",
                                          captureBeyondViewport=True)["data"])


def _port(profile: Path, process: subprocess.Popen) -> int:
    """The debugging port Chromium chose (first line of PROFILE/DevToolsActivePort)."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before opening its debugging port")
        lines = marker.read_text().splitlines() if marker.is_file() else []
        if lines and lines[0].isdigit():
            return int(lines[0])
        time.sleep(0.05)
    raise TimeoutError(f"chromium wrote no {marker} in {START_TIMEOUT_S:.0f} s")


def _page_socket_url(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
        targets = json.load(reply)
    pages = [t for t in targets if t.get("type") == "page"]
    if not pages:
        raise RuntimeError(f"no page target among {[t.get('url') for t in targets]}")
    return pages[0]["webSocketDebuggerUrl"]


def _stop(process: subprocess.Popen) -> None:
    """End Chromium and its helper processes (its process group), politely first."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def open_page(path: Path | str, workdir: Path, width: int = 1280, height: int = 1000):
    """Yield a `Page` of the HTML file `path` (or an http:// URL), loaded with every image complete; `workdir`
    holds the profile and Chromium's log."""
    executable = chromium()
    if executable is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(CANDIDATES)})")
    profile = Path(workdir) / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    url = path if str(path).startswith(("http://", "https://")) else Path(path).absolute().as_uri()
    # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
    command = [executable, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
               "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
               f"--window-size={width},{height}", "about:blank"]
    with open(Path(workdir) / "chromium.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    socket = None
    try:
        port = _port(profile, process)
        # suppress_origin: Chromium refuses DevTools WebSockets whose Origin it was not told to allow.
        socket = websocket.create_connection(_page_socket_url(port), timeout=30, suppress_origin=True)
        page = Page(socket)
        # Navigate only now, from about:blank: a page opened on the command line may still be loading when we
        # connect, and the blank document before it already reads as complete.
        page.call("Page.navigate", url=url)
        # (the query string is left out: a web app such as Prometheus's UI may rewrite it once loaded)
        page.wait_for(f"location.href.split('?')[0] === {json.dumps(url.split('?')[0])} "
                      "&& document.readyState === 'complete' "
                      "&& [...document.images].every(i => i.complete)")
        yield page
    finally:
        if socket is not None:
            socket.close()
        _stop(process)
