"""Which agents exist: the recipients ``send`` accepts.

Lifecycle owns the registry. The broker keeps a set of names: the list at
start, then ``agent.created`` / ``agent.destroyed`` from HIVE_EVENTS; a name
not in the set is looked up with lifecycle ``get`` before it is refused.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hyperhive.common import endpoints as E
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import HiveError, NotFound, RequestTimeout, Unavailable
from hyperhive.common.names import is_agent_name
from hyperhive.common.wire.events import HiveEvent
from hyperhive.common.wire.lifecycle import AgentRequest, AgentsRequest

log = logging.getLogger(__name__)

# states in which an agent cannot receive messages
_NOT_RECIPIENTS = frozenset({"destroyed", "draft"})
_events = msgspec.json.Decoder(HiveEvent)


class KnownAgents:
    """The set of agent names that may receive messages."""

    def __init__(self, nc: NATS, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._names: set[str] = set()
        self._subs: list[Subscription] = []
        self.loaded = asyncio.Event()  # the first full list arrived

    async def start(self) -> None:
        """Follows created/destroyed events; the first list loads in the background.

        Subscribes before listing so that no change falls between the two.
        """
        for kind in (subjects.EV_AGENT_CREATED, subjects.EV_AGENT_DESTROYED):
            self._subs.append(await self._nc.subscribe(subjects.event(kind), cb=self._on_event))

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # connection already closed
                pass

    async def load_forever(self, retry_s: float = 0.5, max_retry_s: float = 10.0) -> None:
        """Loads the full list, retrying until lifecycle answers once."""
        delay = retry_s
        while True:
            try:
                reply = await rpc.call(
                    self._nc,
                    E.SYS_AGENTS,
                    AgentsRequest(),
                    timeout=self._timeout_s,
                )
            except HiveError as exc:
                log.info("agent list not loaded yet (%s); sends look agents up one by one", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_retry_s)
                continue
            self._names.update(a.name for a in reply.agents if a.state not in _NOT_RECIPIENTS)
            self.loaded.set()
            log.info("known agents loaded", extra={"count": len(self._names)})
            return

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = _events.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("ignoring malformed event on %s", msg.subject)
            return
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
