"""Connecting to Ray: the cluster a job names, or an embedded local Ray secured like cluster/local.sh.

An embedded Ray runs with token auth and loopback only. Ray 2.60 writes its default token
(~/.ray/auth_token) world-readable and, on Linux, rewrites a 127.0.0.1 node address to the host's LAN
address, so its servers listen there; see cluster/SECURITY.md. The package travels to workers as a
runtime-env `py_modules` entry, so the cluster needs only the third-party dependencies.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import socket
import stat
import urllib.error
import urllib.request
from urllib.parse import urlsplit
from pathlib import Path

from corrhash.errors import ConfigError, CorrhashError
from corrhash.log import LEVEL_ENV, QUIET_DEPENDENCIES, logger
from corrhash.package import PACKAGE_DIR

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"  # where Ray and `ray get-auth-token` look
# How long a job waits for the cluster it names before saying it cannot reach it (Ray itself retries forever).
CONNECT_TIMEOUT_S = float(os.environ.get("CORRHASH_RAY_CONNECT_TIMEOUT_S", "15"))


def ensure_private_token(path: Path = DEFAULT_TOKEN_PATH) -> None:
    """Create Ray's token file 0600 before Ray would create it 0644; tighten an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
        return
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))  # the same 256-bit hex token `ray get-auth-token --generate` makes


def secure_local_ray() -> None:
    """Call before ray.init starts a local Ray: its servers then inherit these settings."""
    # Unset, Ray 2.60 turns token auth on for a Ray that ray.init starts; it reads the mode once,
    # so a shell's RAY_AUTH_MODE=disabled cannot be overridden here: refuse it.
    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        raise ConfigError(f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}: a local Ray runs only with token "
                          "authentication; unset it or set RAY_AUTH_MODE=token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        ensure_private_token()
    single_node_mode()


def single_node_mode() -> None:
    """Ray's single-node mode: it keeps the node address, and so the client proxy, the agents and the metrics
    servers, on 127.0.0.1, and a driver of a loopback head on 127.0.0.1 (else Ray rewrites it to the host's LAN
    address and retries that forever). The constant is read at import time, hence both assignments."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _dashboard_session(url: str, where: str) -> str:
    """The session a Ray dashboard serves (its /api/version), asked with the cluster's token."""
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    request = urllib.request.Request(f"{url.rstrip('/')}/api/version", headers=get_auth_headers_if_auth_enabled({}))
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S) as response:
            return json.load(response)["session_name"]
    except urllib.error.HTTPError as error:
        hint = " (set RAY_AUTH_TOKEN_PATH to the cluster's token file)" if error.code in (401, 403) else ""
        raise ConfigError(f"{where}: the Ray dashboard at {url} answered HTTP {error.code}{hint}") from None
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{where}: no Ray dashboard answers at {url} within {CONNECT_TIMEOUT_S:g} s "
                          f"({getattr(error, 'reason', error)})") from None


def gcs_address(address: str, where: str) -> str:
    """The address a driver gives ray.init, from either form Ray documents for a cluster: the GCS HOST:PORT
    (or ray://HOST:PORT for Ray Client), or the dashboard's http(s)://HOST:PORT that `ray job submit` reads
    from RAY_ADDRESS (ray.init refuses it). For the dashboard form, the dashboard names its session and a
    head on this machine keeps its GCS port in that session's folder; a head elsewhere needs the GCS form."""
    if not address.startswith(("http://", "https://")):
        return address
    from ray._common.utils import get_default_ray_temp_dir

    session = _dashboard_session(address, where)
    ports = sorted((Path(get_default_ray_temp_dir()) / session).glob("gcs_server_port_*"))
    if not ports:
        raise ConfigError(f"{where}: {address} is the Jobs API of a Ray head on another machine; a job run "
                          "directly connects to the head's GCS: --address HOST:PORT (the head's `ray start "
                          "--port`, 6379 unless set), or run the job with `ray job submit`")
    host = urlsplit(address).hostname
    host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets before the port
    return f"{host}:{ports[0].read_text().strip()}"


def _reachable(address: str, where: str) -> None:
    """Refuse a GCS address nothing listens on, within CONNECT_TIMEOUT_S: ray.init would retry forever."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{where}: {address!r} is not a Ray address (HOST:PORT, ray://HOST:PORT, "
                          "http://HOST:DASHBOARD_PORT, auto or local)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(f"{where}: cannot reach a Ray cluster at {host}:{port} within {CONNECT_TIMEOUT_S:g} s "
                          f"({error.strerror or error})") from None


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def init_ray(address: str | None) -> None:
    """Connect to the cluster `address` (else $RAY_ADDRESS) names, or start a local Ray when neither is set."""
    import ray

    if ray.is_initialized():
        return
    # Workers print corrhash's lines at the job's --quiet/--verbose level and skip MLflow's download bars too.
    runtime_env = {"py_modules": [str(PACKAGE_DIR)],
                   "env_vars": {"RAY_TRAIN_V2_ENABLED": "1", LEVEL_ENV: logging.getLevelName(logger.getEffectiveLevel()),
                                **QUIET_DEPENDENCIES}}
    where = f"--address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
    # "local" always starts a fresh local Ray: with no address, ray.init would instead join whatever
    # cluster /tmp/ray/ray_current_cluster names, and hang if that cluster is gone.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        secure_local_ray()
    elif address != "auto":
        address = gcs_address(address, where)
        _reachable(address, where)
        if _is_loopback(address.removeprefix("ray://").rpartition(":")[0]):
            single_node_mode()
        os.environ.pop("RAY_ADDRESS", None)  # ray.init reads it too, and refuses the dashboard form
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, configure_logging=False)
    except ConnectionError as error:  # e.g. a token-protected head and no token: Ray's message, without its traceback
        raise ConfigError(f"{where}: {error}; a cluster with token authentication needs RAY_AUTH_MODE=token and "
                          "RAY_AUTH_TOKEN_PATH (the line `cluster/local.sh start` prints)") from None


def storage_path(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).absolute())


def check_fits(option: str, cpus: float, gpus: float) -> None:
    """Refuse a worker or trial no node can hold: Ray would leave it PENDING forever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        largest = max(nodes, key=lambda n: (n.get("CPU", 0), n.get("GPU", 0)), default={})
        raise ConfigError(f"{option}: no node of the Ray cluster has that much (largest: "
                          f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU)")


def user_error(error: BaseException | None) -> CorrhashError | None:
    """The CorrhashError a Ray worker or trial raised, found inside Ray's wrappers (RayTaskError,
    WorkerGroupError, TuneError), so a job reports its message instead of Ray's traceback."""
    seen, todo = set(), [error]
    while todo:
        error = todo.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, CorrhashError):
            inner = getattr(error, "cause", None)  # a RayTaskError posing as the DataError it carries
            return inner if isinstance(inner, CorrhashError) else error
        todo += [getattr(error, "cause", None), error.__cause__, error.__context__,
                 *getattr(error, "worker_failures", {}).values()]
    return None
