"""Which agents exist: the recipients ``send`` accepts.

Lifecycle owns the registry. The broker keeps a set of names: the list at
start, then ``agent.created`` / ``agent.destroyed`` followed on HIVE_EVENTS; a name
not in the set is looked up with lifecycle ``get`` before it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS

from hyperhive.common import endpoints as E
from hyperhive.common import follow, retry, rpc, subjects
from hyperhive.common.errors import HiveError, NotFound, RequestTimeout, Unavailable
from hyperhive.common.names import is_agent_name
from hyperhive.common.wire.events import HiveEvent
from hyperhive.common.wire.lifecycle import AgentRequest, AgentsRequest
from hyperhive.common.wire.states import DESTROYED, DRAFT

log = logging.getLogger(__name__)

# states in which an agent cannot receive messages
_NOT_RECIPIENTS = frozenset({DESTROYED, DRAFT})


class KnownAgents:
    """The set of agent names that may receive messages."""

    def __init__(self, nc: NATS, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._names: set[str] = set()
        self._follower: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()  # the first full list arrived

    async def start(self) -> None:
        """Follows created/destroyed events; the first list loads in the background.

        Follows before listing so that no change falls between the two.
        """
        kinds = (subjects.EV_AGENT_CREATED, subjects.EV_AGENT_DESTROYED)
        self._follower = await follow.start_following(
            self._nc.jetstream(),
            self._on_event,
            [subjects.event(k) for k in kinds],
            name="known-agents-events",
        )

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower

    async def load_forever(self) -> None:
        """Loads the full list, retrying until lifecycle answers once (sends
        look agents up one by one meanwhile)."""
        reply = await retry.retry(
            lambda: rpc.call(self._nc, E.SYS_AGENTS, AgentsRequest(), timeout=self._timeout_s),
            retry.PEER_SERVICE,
            on=(HiveError,),
            what="loading the agent list",
        )
        self._names.update(a.name for a in reply.agents if a.state not in _NOT_RECIPIENTS)
        self.loaded.set()
        log.info("known agents loaded", extra={"count": len(self._names)})

    def _on_event(self, _seq: int, event: HiveEvent) -> None:
        name = event.agent or event.data.get("name")
        if not isinstance(name, str) or not is_agent_name(name):
            return
        if event.kind == subjects.EV_AGENT_CREATED:
            self._names.add(name)
        elif event.kind == subjects.EV_AGENT_DESTROYED:
            self._names.discard(name)

    def add(self, name: str) -> None:
        self._names.add(name)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    async def check(self, name: str) -> None:
        """Returns if ``name`` may receive messages.

        Raises:
            NotFound: no such agent (or it is destroyed, or only a draft).
            Unavailable: not cached and lifecycle could not be asked.
        """
        if name == subjects.OPERATOR or name in self._names:
            return
        try:
            info = await rpc.call(
                self._nc,
                E.SYS_AGENT,
                AgentRequest(name=name),
                timeout=self._timeout_s,
            )
        except NotFound:
            raise NotFound(f"unknown recipient {name!r}: no such agent") from None
        except (Unavailable, RequestTimeout) as exc:
            raise Unavailable(
                f"cannot check recipient {name!r}: the agent registry (lifecycle) "
                f"is unavailable: {exc}"
            ) from None
        if info.state in _NOT_RECIPIENTS:
            raise NotFound(f"unknown recipient {name!r}: the agent is {info.state}")
        self._names.add(name)
