"""Connecting to Ray: the cluster a job names, or an embedded local Ray secured like cluster/local.sh.

An embedded Ray runs with token auth and loopback only. Ray 2.60 writes its default token
(~/.ray/auth_token) world-readable and, on Linux, rewrites a 127.0.0.1 node address to the host's LAN
address, so its servers listen there; see cluster/SECURITY.md. The package travels to workers as a
runtime-env `py_modules` entry, so the cluster needs only the third-party dependencies.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import corrhash
from corrhash.errors import ConfigError, CorrhashError

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"  # where Ray and `ray get-auth-token` look
PACKAGE_DIR = Path(corrhash.__file__).parent


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
    from ray._private import ray_constants

    # Unset, Ray 2.60 turns token auth on for a Ray that ray.init starts; it reads the mode once,
    # so a shell's RAY_AUTH_MODE=disabled cannot be overridden here: refuse it.
    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        raise ConfigError(f"RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}: a local Ray runs only with token "
                          "authentication; unset it or set RAY_AUTH_MODE=token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        ensure_private_token()
    # Ray's single-node mode keeps the node address, and so the client proxy, the agents and the
    # metrics servers, on 127.0.0.1. The constant is read at import time, hence both assignments.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"py_modules": [str(PACKAGE_DIR)], "env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}}
    # "local" always starts a fresh local Ray: with no address, ray.init would instead join whatever
    # cluster /tmp/ray/ray_current_cluster names, and hang if that cluster is gone.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        secure_local_ray()
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, configure_logging=False)


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
