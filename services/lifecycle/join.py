"""Joining a machine to the hive: one-time tokens and the join handler.

The control half mounts :class:`Joins` (its :meth:`Joins.endpoints`):
``hive.admin.nodes.join_token`` (the operator) issues a token,
``hive.system.nodes.join`` (the new machine) spends it. docs/multihost.md
says why a token is what it is.

A token is the seed of a fresh NATS user of the hub, ``join-<id>``, that may
publish only ``hive.system.nodes.join`` and read only its own inbox. Its
state is one file, ``<nats dir>/joins/<public key>.json`` holding its expiry:
spending it renames that file away first, so two requests cannot both win.
The joining machine sends the public key of a seed it made for its node
agent; the hub installs the user ``node-<name>`` with
:func:`~hyperhive.common.nats_auth.node_permissions` for that key. No secret
crosses the bus but the token itself, which is worthless once used.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors

from hyperhive.common import endpoints as E
from hyperhive.common import nats_auth, subjects
from hyperhive.common.config import Settings
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import BadRequest, Conflict, Forbidden
from hyperhive.common.names import check_node_name
from hyperhive.common.paths import nats_dir
from hyperhive.common.rpc import Call, Handler, Responder
from hyperhive.common.wire.join import (
    JoinReply,
    JoinRequest,
    JoinToken,
    JoinTokenRequest,
    join_proof,
)

log = logging.getLogger(__name__)

# The control half records the node (its registry row, a ``node.joined``
# event): called with a valid, signed request before the node's NATS user
# exists; raising a HiveError (e.g. Conflict: the name is taken) refuses the
# join and keeps the token. Without one, the hub's NATS users are the record:
# a name whose ``node-<name>`` user exists is refused all the same.
Register = Callable[[JoinRequest], Awaitable[None]]

# a spent token's user is removed this long after the reply, which must
# reach the joining machine over that user's connection first
JOIN_USER_LINGER_S = 2.0
EFFECTIVE_TIMEOUT_S = 10.0
SWEEP_INTERVAL_S = 60.0
# the node ``hive serve lifecycle`` runs in-process
HUB_NODE = subjects.HUB_NODE


class _TokenFile(msgspec.Struct, kw_only=True):
    expires_at: float


class Joins:
    """Join tokens and the join handler of one hub.

    Args:
        settings: the control half's settings (``nats.auth_file`` and a
            reload method must be set: tokens and nodes are NATS users).
        register: records the joining node; see :data:`Register`.
    """

    def __init__(self, settings: Settings, register: Register | None = None) -> None:
        self.settings = settings
        self.register = register
        self.root = nats_dir(settings)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def reserved_names(self) -> set[str]:
        """The hub's in-process node: a machine joining under its name would
        read the requests (agents' seeds among them) meant for the hub."""
        return {HUB_NODE, self.settings.node.name}

    @property
    def tokens_dir(self) -> Path:
        return self.root / "joins"

    def endpoints(self) -> dict[Endpoint[Any, Any], Handler]:
        """``hive.admin.nodes.join_token`` and ``hive.system.nodes.join``."""
        return {E.JOIN_TOKEN: self.issue, E.JOIN: self.join}

    async def serve(self, responder: Responder) -> None:
        """Serves :meth:`endpoints` on ``responder``."""
        for endpoint, handler in self.endpoints().items():
            await responder.serve(endpoint, handler)

    async def issue(self, req: JoinTokenRequest, _call: Call | None = None) -> JoinToken:
        """A fresh token valid for ``req.ttl_s`` seconds, usable once.

        Returns only when nats-server accepts the token's user.

        Raises:
            Unavailable: nats-server could not be told to reload.
        """
        seed = nats_auth.new_seed()
        key = nats_auth.public_key(seed)
        expires_at = time.time() + req.ttl_s
        await asyncio.to_thread(self._issue, key, expires_at)
        await _until_accepted(self.settings.nats.url, seed)
        log.info("join token %s issued, valid %ss", nats_auth.join_user_name(key), req.ttl_s)
        return JoinToken(
            token=seed.decode(),
            public_key=key,
            user=nats_auth.join_user_name(key),
            expires_at=expires_at,
        )

    def _issue(self, key: str, expires_at: float) -> None:
        self._sweep()
        self.tokens_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.tokens_dir / f"{key}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(_TokenFile(expires_at=expires_at)))
        nats_auth.put_user(
            self.root,
            nats_auth.NatsUser(
                name=nats_auth.join_user_name(key),
                nkey=key,
                permissions=nats_auth.join_permissions(key),
            ),
        )
        self._apply()

    async def join(self, req: JoinRequest, _call: Call | None = None) -> JoinReply:
        """Spends a token: node ``req.name`` gets its NATS user.

        Raises:
            BadRequest: a malformed name, key or signature.
            Forbidden: an unknown, used or expired token, or a signature
                that its seed did not make.
            Conflict: a node of that name exists.
        """
        check_node_name(req.name)
        if req.name in self.reserved_names:
            raise Conflict(f"node name {req.name} is the hub's own")
        nats_auth.check_public_key(req.node_key)
        nats_auth.check_public_key(req.token_key)
        try:
            signature = base64.b64decode(req.signature, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("signature is not base64") from None
        claimed = await asyncio.to_thread(self._claim, req.token_key)
        try:
            proof = join_proof(req.name, req.node_key, req.token_key)
            if not nats_auth.verify(req.token_key, proof, signature):
                raise Forbidden("the join request is not signed by its token")
            node_user = nats_auth.node_user_name(req.name)
            node_file = nats_auth.users_dir(self.root) / f"{node_user}.json"
            if node_file.exists():
                raise Conflict(f"node {req.name} has already joined")
            if self.register is not None:
                await self.register(req)
        except BaseException:
            with contextlib.suppress(OSError):
                claimed.rename(self._token_path(req.token_key))
            raise
        await asyncio.to_thread(self._install_node, req, claimed)
        self._later(self._forget_join_user(req.token_key))
        log.info("node %s joined (host %r)", req.name, req.hostname)
        return JoinReply(
            node=req.name,
            user=nats_auth.node_user_name(req.name),
            inbox_prefix=nats_auth.node_inbox_prefix(req.name),
        )

    def _token_path(self, key: str) -> Path:
        return self.tokens_dir / f"{key}.json"

    def _claim(self, key: str) -> Path:
        """Takes the token's file out of the way (atomic: one request wins)."""
        path = self._token_path(key)
        claimed = path.with_name(f"{key}.claimed")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            raise Forbidden("unknown or already used join token") from None
        try:
            expires_at = msgspec.json.decode(claimed.read_bytes(), type=_TokenFile).expires_at
        except (OSError, msgspec.DecodeError):
            expires_at = 0.0
        if expires_at <= time.time():
            claimed.unlink(missing_ok=True)
            self._remove_join_user(key)
            raise Forbidden("join token expired")
        return claimed

    def _install_node(self, req: JoinRequest, claimed: Path) -> None:
        nats_auth.put_user(self.root, nats_auth.node_user(req.name, req.node_key))
        claimed.unlink(missing_ok=True)
        self._apply()

    async def _forget_join_user(self, key: str) -> None:
        await asyncio.sleep(JOIN_USER_LINGER_S)
        await asyncio.to_thread(self._remove_join_user, key)

    def _remove_join_user(self, key: str) -> None:
        nats_auth.remove_user(self.root, nats_auth.join_user_name(key))
        self._apply()

    async def sweep_loop(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Sweeps (:meth:`sweep`) now and every ``interval_s`` seconds, for
        ever: a token's user outlives neither its expiry nor a restart."""
        while True:
            try:
                await asyncio.to_thread(self._sweep)
            except Exception:  # a failed reload: the next round tries again
                log.exception("join token sweep failed")
            await asyncio.sleep(interval_s)

    def sweep(self) -> int:
        """Removes expired tokens and the users of spent ones. Returns how many."""
        return self._sweep()

    def _sweep(self) -> int:
        now = time.time()
        removed = 0
        tokens = sorted(self.tokens_dir.glob("*.json")) if self.tokens_dir.is_dir() else []
        # a token being spent (renamed ``.claimed``) keeps its user until then
        live = {nats_auth.join_user_name(p.stem) for p in self.tokens_dir.glob("*.claimed")}
        for path in tokens:
            try:
                expires_at = msgspec.json.decode(path.read_bytes(), type=_TokenFile).expires_at
            except (OSError, msgspec.DecodeError):
                expires_at = 0.0
            if expires_at > now:
                live.add(nats_auth.join_user_name(path.stem))
            else:
                path.unlink(missing_ok=True)
        for user in nats_auth.list_users(self.root):
            if user.name.startswith("join-") and user.name not in live:
                nats_auth.remove_user(self.root, user.name)
                removed += 1
        if removed:
            self._apply()
        return removed

    def _apply(self) -> None:
        auth_file = self.settings.nats.auth_file
        nats_auth.render_auth_file(self.root, Path(auth_file) if auth_file else None)
        nats_auth.reload_server(self.settings.nats)

    def _later(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def remove_node(settings: Settings, node: str) -> None:
    """Removes node ``node``'s NATS user from the hub (its connection is
    closed by the server at the reload). The control half calls it when the
    operator removes a node; the name may then join again.

    Raises:
        Unavailable: nats-server could not be told to reload.
    """
    root = nats_dir(settings)
    nats_auth.remove_user(root, nats_auth.node_user_name(check_node_name(node)))
    auth_file = settings.nats.auth_file
    nats_auth.render_auth_file(root, Path(auth_file) if auth_file else None)
    nats_auth.reload_server(settings.nats)


async def _until_accepted(url: str, seed: bytes) -> None:
    """Waits until nats-server accepts ``seed`` (the reload is live)."""
    deadline = time.monotonic() + EFFECTIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError, nats.errors.Error):
            nc = await nats.connect(
                url,
                nkeys_seed_str=seed.decode(),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
                error_cb=_quiet,
            )
            await nc.close()
            return
        await asyncio.sleep(0.05)
    log.warning("nats-server did not accept a new join token within %ss", EFFECTIVE_TIMEOUT_S)


async def _quiet(_exc: Exception) -> None:
    """Auth errors are the expected answer while waiting for a reload."""
