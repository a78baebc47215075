"""Per-agent NATS credentials: issued at create, revoked at destroy.

The server's auth file lists public keys only; the agent's seed sits in its
``run/nats.seed``. A change is applied by re-rendering the auth file and
asking nats-server to reload, which keeps every other connection up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import nats
import nats.errors

from hyperhive.common import nats_auth
from hyperhive.common.config import Settings
from hyperhive.common.paths import AgentPaths, nats_dir

log = logging.getLogger(__name__)

# users.d and auth.conf are shared by every agent's operation
_render_lock = threading.Lock()


def user_name(name: str) -> str:
    """The NATS user of agent ``name``."""
    return f"agent-{name}"


# how long to wait for nats-server to apply a reloaded auth file
EFFECTIVE_TIMEOUT_S = 10.0


def _reloads(settings: Settings) -> bool:
    return bool(settings.nats.reload_pid_file or settings.nats.reload_command)


def _apply(settings: Settings) -> None:
    directory = nats_dir(settings)
    auth_file = Path(settings.nats.auth_file) if settings.nats.auth_file else None
    nats_auth.render_auth_file(directory, auth_file)
    if _reloads(settings):
        nats_auth.reload_server(settings.nats)
    else:
        log.warning("NATS reload not configured: agent credentials take effect at its restart")


async def _can_connect(settings: Settings, seed: bytes) -> bool:
    try:
        nc = await nats.connect(
            settings.nats.url,
            nkeys_seed_str=seed.decode(),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
            error_cb=_quiet,
        )
    except (OSError, TimeoutError, nats.errors.Error):
        return False
    await nc.close()
    return True


async def _quiet(_exc: Exception) -> None:
    """Auth errors are the expected answer while waiting for a reload."""


async def _until(settings: Settings, seed: bytes, accepted: bool) -> None:
    """Waits until nats-server accepts (or refuses) ``seed``: the reload is live.

    Callers rely on it: credentials work when create returns, and are refused
    when destroy returns.
    """
    if not _reloads(settings):
        return
    deadline = time.monotonic() + EFFECTIVE_TIMEOUT_S
    while await _can_connect(settings, seed) != accepted:
        if time.monotonic() > deadline:
            log.warning("nats-server did not apply the auth change within %ss", EFFECTIVE_TIMEOUT_S)
            return
        await asyncio.sleep(0.05)


def _issue(settings: Settings, name: str) -> bytes:
    paths = AgentPaths.of(settings, name)
    seed = nats_auth.new_seed()
    nats_auth.write_seed(paths.nats_seed, seed)
    with _render_lock:
        nats_auth.put_user(
            nats_dir(settings),
            nats_auth.NatsUser(
                name=user_name(name),
                nkey=nats_auth.public_key(seed),
                permissions=nats_auth.agent_permissions(name),
            ),
        )
        _apply(settings)
    return seed


def read_seed(settings: Settings, name: str) -> bytes | None:
    """The seed lifecycle issued ``name`` (kept on the hub), if any."""
    try:
        return AgentPaths.of(settings, name).nats_seed.read_bytes().strip() or None
    except OSError:
        return None


def _revoke(settings: Settings, name: str, seed: bytes | None) -> bytes | None:
    seed_file = AgentPaths.of(settings, name).nats_seed
    seed = seed or read_seed(settings, name)
    with _render_lock:
        nats_auth.remove_user(nats_dir(settings), user_name(name))
        _apply(settings)
    seed_file.unlink(missing_ok=True)
    return seed


async def issue(settings: Settings, name: str) -> bytes:
    """A fresh nkey for ``name`` (any previous one stops working). Returns
    its seed (for the node that runs the agent).

    Raises:
        Unavailable: nats-server could not be told to reload.
    """
    seed = await asyncio.to_thread(_issue, settings, name)
    await _until(settings, seed, accepted=True)
    return seed


async def revoke(settings: Settings, name: str, seed: bytes | None = None) -> None:
    """Removes ``name``'s NATS user; its connections are closed by the server.

    ``seed``: the agent's seed read before its run dir went (to wait until
    the server refuses it); else it is read from the run dir.
    """
    seed = await asyncio.to_thread(_revoke, settings, name, seed)
    if seed:
        await _until(settings, seed, accepted=False)


def has_user(settings: Settings, name: str) -> bool:
    return (nats_auth.users_dir(nats_dir(settings)) / f"{user_name(name)}.json").exists()
