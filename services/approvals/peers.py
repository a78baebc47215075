"""Calls from approvals to the other services (lifecycle, broker)."""

from __future__ import annotations

from typing import Final

from nats.aio.client import Client as NATS

from hyperhive.common import delivery, rpc, subjects
from hyperhive.common import endpoints as E
from hyperhive.common.errors import NotFound
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.events import SystemEvent
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentRequest,
    ApplyReply,
    ApplyRequest,
    CreateRequest,
    DraftInfo,
    DraftRequest,
)

LIFECYCLE: Final = "lifecycle"
QUICK_TIMEOUT_S: Final = 10.0


class Peers:
    """The lifecycle and broker calls approvals makes, with its timeouts."""

    def __init__(self, nc: NATS, build_timeout_s: float) -> None:
        self._nc = nc
        self._build_timeout_s = build_timeout_s

    async def agent(self, name: str) -> AgentInfo | None:
        """The registry entry of ``name``; None if unknown or destroyed."""
        try:
            return await rpc.call(
                self._nc,
                E.SYS_AGENT,
                AgentRequest(name=name),
                timeout=QUICK_TIMEOUT_S,
            )
        except NotFound:
            return None

    async def drafts(self) -> list[DraftInfo]:
        reply = await rpc.call(
            self._nc,
            E.SYS_DRAFTS,
            Empty(),
            timeout=QUICK_TIMEOUT_S,
        )
        return list(reply.drafts)

    async def draft(self, name: str) -> DraftInfo:
        return await rpc.call(
            self._nc,
            E.DRAFT,
            DraftRequest(name=name),
            timeout=QUICK_TIMEOUT_S * 3,
        )

    async def apply(self, name: str) -> ApplyReply:
        """Rebuilds ``name`` from its applied working tree (may take minutes)."""
        return await rpc.call(
            self._nc,
            E.APPLY,
            ApplyRequest(name=name),
            timeout=self._build_timeout_s,
        )

    async def create(self, name: str, sha: str | None, host: str = "") -> AgentInfo:
        """Creates and starts ``name`` (from the applied tree when ``sha`` is set),
        on node ``host`` (``""``: lifecycle picks)."""
        return await rpc.call(
            self._nc,
            E.CREATE,
            CreateRequest(name=name, sha=sha, host=host),
            timeout=self._build_timeout_s,
        )

    async def deliver(self, event: SystemEvent, key: str) -> None:
        """Hands a system event for the manager's inbox to the durable delivery
        path (deduplicated by ``key``); the broker inserts it whenever it runs.

        Raises:
            Unavailable: not stored yet; the caller keeps it and tries again.
        """
        await delivery.submit(self._nc.jetstream(), subjects.MANAGER, event, key)
