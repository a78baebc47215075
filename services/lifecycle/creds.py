"""Per-agent NATS credentials: issued at create, revoked at destroy.

The server's auth file lists public keys only; the agent's seed sits in its
``run/nats.seed``. A change is applied by re-rendering the auth file and
asking nats-server to reload, which keeps every other connection up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from hyperhive.common import nats_auth
from hyperhive.common.config import Settings
from hyperhive.common.paths import AgentPaths, nats_dir

log = logging.getLogger(__name__)

# users.d and auth.conf are shared by every agent's operation
_render_lock = threading.Lock()


def user_name(name: str) -> str:
    """The NATS user of agent ``name``."""
    return f"agent-{name}"


def _apply(settings: Settings) -> None:
    directory = nats_dir(settings)
    auth_file = Path(settings.nats.auth_file) if settings.nats.auth_file else None
    nats_auth.render_auth_file(directory, auth_file)
    if settings.nats.reload_pid_file or settings.nats.reload_command:
        nats_auth.reload_server(settings.nats)
    else:
        log.warning("NATS reload not configured: agent credentials take effect at its restart")


def _issue(settings: Settings, name: str) -> None:
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


def _revoke(settings: Settings, name: str) -> None:
    with _render_lock:
        nats_auth.remove_user(nats_dir(settings), user_name(name))
        _apply(settings)
    AgentPaths.of(settings, name).nats_seed.unlink(missing_ok=True)


async def issue(settings: Settings, name: str) -> None:
    """A fresh nkey for ``name`` (any previous one stops working).

    Raises:
        Unavailable: nats-server could not be told to reload.
    """
    await asyncio.to_thread(_issue, settings, name)


async def revoke(settings: Settings, name: str) -> None:
    """Removes ``name``'s NATS user; its connections are closed by the server."""
    await asyncio.to_thread(_revoke, settings, name)


def has_user(settings: Settings, name: str) -> bool:
    return (nats_auth.users_dir(nats_dir(settings)) / f"{user_name(name)}.json").exists()
