"""Waking waiting ``recv`` calls when a message arrives, across broker instances.

A waiting ``recv`` holds a :class:`Waiter` for its agent. A send to an agent
with a waiter in this instance reserves it and stores its message already
handed to it, in the send's own statement: the waiter returns that row, with
no wake-up and no claim (profiled: the claim after the wake was a second
statement on every delivery's path). After a send that handed nothing
commits, the broker sets its own waiters for the recipients at once and
publishes the recipients on an internal wake subject, so that other broker
instances wake theirs. An instance that starts publishes a wake for everyone:
if an instance died between a commit and its wake, the waiters elsewhere
look again when it comes back (and in any case when their wait ends).

Nothing here polls the table; a waiting ``recv`` also looks again when one of
its agent's leases expires (see ``Broker.recv``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

if TYPE_CHECKING:
    from asyncpg import Record

from hyperhive.common import subjects
from hyperhive.common.wire.broker import BrokerWake

log = logging.getLogger(__name__)

_wake_enc = msgspec.json.Encoder()
_wake_dec = msgspec.json.Decoder(BrokerWake)


class Waiter:
    """One waiting ``recv``: set when its agent may have a new message.

    A bare future rather than an :class:`asyncio.Event` so that a wake-up
    resumes the waiting handler directly, without a helper task.

    While it waits, a send to its agent may reserve it (:meth:`Waiters.reserve`)
    and hand it the message it stored (:meth:`hand`): the recv then returns
    that row, without looking in the table again. A reserved waiter keeps
    waiting past its timeout until the send's commit says yes or no.
    """

    __slots__ = ("_fut", "_handoff", "_waiting", "traceparent")

    def __init__(self, traceparent: str | None = None) -> None:
        self._fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handoff: asyncio.Future[Record | None] | None = None
        self._waiting = False
        self.traceparent = traceparent  # of the recv, for its message.delivered

    def set(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    def is_set(self) -> bool:
        return self._fut.done()

    def clear(self) -> None:
        if self._fut.done():
            self._fut = asyncio.get_running_loop().create_future()

    @property
    def free(self) -> bool:
        """Waiting, not woken, not reserved: a send may hand it its message."""
        return self._waiting and self._handoff is None and not self._fut.done()

    def reserve(self) -> None:
        self._handoff = asyncio.get_running_loop().create_future()

    def hand(self, row: Record | None) -> None:
        """The reserving send's outcome: its message's row, or None (look again)."""
        if self._handoff is not None and not self._handoff.done():
            self._handoff.set_result(row)
        self.set()

    async def wait(self, timeout: float) -> Record | None:
        """Returns when set or after ``timeout`` seconds, whichever comes first,
        with the row a send handed over (None: none)."""
        self._waiting = True
        try:
            if not self._fut.done():
                await asyncio.wait((self._fut,), timeout=timeout)
        finally:
            self._waiting = False
        handoff, self._handoff = self._handoff, None
        # reserved: the send's commit is under way, and brief; its row is this
        # recv's (else it would wait for its lease to end)
        return None if handoff is None else await handoff


class Waiters:
    """The :class:`Waiter` of each waiting ``recv`` in this process, by agent."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._waiters: dict[str, set[Waiter]] = {}
        self._origin = uuid.uuid4().hex
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Listens to other instances' wakes and tells them this one started."""
        self._sub = await self._nc.subscribe(subjects.BROKER_WAKE, cb=self._on_wake)
        await self._publish(BrokerWake(origin=self._origin, everyone=True))

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # connection already closed
                await self._sub.unsubscribe()

    @contextlib.contextmanager
    def watch(self, agent: str, traceparent: str | None = None) -> Iterator[Waiter]:
        """A waiter set whenever ``agent`` may have a new message, while inside."""
        waiter = Waiter(traceparent)
        self._waiters.setdefault(agent, set()).add(waiter)
        try:
            yield waiter
        finally:
            group = self._waiters.get(agent)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[agent]

    def reserve(self, agent: str) -> Waiter | None:
        """A free waiter of ``agent``, reserved for a send about to commit (None: none)."""
        for waiter in self._waiters.get(agent, ()):
            if waiter.free:
                waiter.reserve()
                return waiter
        return None

    def notify(self, agent: str) -> None:
        for waiter in self._waiters.get(agent, ()):
            waiter.set()

    def notify_all(self) -> None:
        """Wakes every waiter (a peer started, or this service is stopping)."""
        for group in self._waiters.values():
            for waiter in group:
                waiter.set()

    async def committed(self, recipients: Iterable[str]) -> None:
        """Wakes local waiters of ``recipients`` and tells other instances (after commit)."""
        names = sorted(set(recipients))
        for name in names:
            self.notify(name)
        if names:
            await self._publish(BrokerWake(origin=self._origin, recipients=names))

    async def _publish(self, wake: BrokerWake) -> None:
        try:
            await self._nc.publish(subjects.BROKER_WAKE, _wake_enc.encode(wake))
        except Exception as exc:  # NATS down: remote waiters look again when their wait ends
            log.warning("could not publish a wake-up: %s", exc)

    async def _on_wake(self, msg: Msg) -> None:
        try:
            wake = _wake_dec.decode(msg.data)
        except msgspec.DecodeError:
            return
        if wake.origin == self._origin:
            return
        if wake.everyone:
            self.notify_all()
        for name in wake.recipients:
            self.notify(name)
