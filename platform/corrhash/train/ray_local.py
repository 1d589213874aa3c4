"""Settings for a Ray that this process starts itself (embedded mode): token auth on, loopback only.

Ray 2.60 writes its default token (~/.ray/auth_token) world-readable and, on Linux, rewrites a
127.0.0.1 node address to the host's LAN address, so its servers listen there. See cluster/SECURITY.md.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from corrhash.errors import ConfigError

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"  # where Ray and `ray get-auth-token` look


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
