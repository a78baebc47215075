"""Waking waiting ``recv`` calls when a message arrives, across broker instances.

A waiting ``recv`` holds a :class:`Waiter` for its agent. After a send
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

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hyperhive.common import subjects
from hyperhive.common.wire.broker import BrokerWake

log = logging.getLogger(__name__)

_wake_enc = msgspec.json.Encoder()
_wake_dec = msgspec.json.Decoder(BrokerWake)


class Waiter:
    """One waiting ``recv``: set when its agent may have a new message.

    A bare future rather than an :class:`asyncio.Event` so that a wake-up
    resumes the waiting handler directly, without a helper task.
    """

    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    def is_set(self) -> bool:
        return self._fut.done()

    def clear(self) -> None:
        if self._fut.done():
            self._fut = asyncio.get_running_loop().create_future()

    async def wait(self, timeout: float) -> None:
        """Returns when set or after ``timeout`` seconds, whichever comes first."""
        if not self._fut.done():
            await asyncio.wait((self._fut,), timeout=timeout)


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
    def watch(self, agent: str) -> Iterator[Waiter]:
        """A waiter set whenever ``agent`` may have a new message, while inside."""
        waiter = Waiter()
        self._waiters.setdefault(agent, set()).add(waiter)
        try:
            yield waiter
        finally:
            group = self._waiters.get(agent)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[agent]

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
