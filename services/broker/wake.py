"""Waking waiting ``recv`` calls when a message arrives, across broker instances.

A waiting ``recv`` registers an :class:`asyncio.Event` for its agent. After a
send commits, the broker sets the events of its own waiters at once and
publishes the recipients on an internal wake subject, so other broker
instances wake theirs. ``message.sent`` events from HIVE_EVENTS wake them
too: they come late, but they come even when the instance that committed the
message died before its wake publish (its outbox rows are published by the
next relay that runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hyperhive.common import subjects
from hyperhive.common.wire.events import HiveEvent

log = logging.getLogger(__name__)

WAKE_SUBJECT = subjects.system("broker", "wake")


class Wake(msgspec.Struct, kw_only=True):
    """Internal: ``recipients`` have new messages (published by ``origin``)."""

    origin: str
    recipients: list[str]
    ids: list[int] = msgspec.field(default_factory=list)


_wake_enc = msgspec.json.Encoder()
_wake_dec = msgspec.json.Decoder(Wake)
_event_dec = msgspec.json.Decoder(HiveEvent)


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

    def __init__(self, nc: NATS, *, remember: int = 4096) -> None:
        self._nc = nc
        self._events: dict[str, set[Waiter]] = {}
        self._origin = uuid.uuid4().hex
        self._subs: list[Subscription] = []
        # ids this instance already woke for; their late message.sent is skipped
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._remember = remember

    async def start(self) -> None:
        self._subs.append(await self._nc.subscribe(WAKE_SUBJECT, cb=self._on_wake))
        self._subs.append(
            await self._nc.subscribe(subjects.event(subjects.EV_MESSAGE_SENT), cb=self._on_sent)
        )

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # connection already closed
                pass

    @contextlib.contextmanager
    def watch(self, agent: str) -> Iterator[Waiter]:
        """A waiter set whenever ``agent`` may have a new message, while inside."""
        event = Waiter()
        self._events.setdefault(agent, set()).add(event)
        try:
            yield event
        finally:
            group = self._events.get(agent)
            if group is not None:
                group.discard(event)
                if not group:
                    del self._events[agent]

    def waiting(self, agent: str) -> int:
        return len(self._events.get(agent, ()))

    def notify(self, agent: str) -> None:
        for event in self._events.get(agent, ()):
            event.set()

    def notify_all(self) -> None:
        """Wakes every waiter (the service is stopping)."""
        for group in self._events.values():
            for event in group:
                event.set()

    async def committed(self, recipients: Iterable[str], ids: Iterable[int]) -> None:
        """Wakes local waiters and tells other instances (call after commit)."""
        names = sorted(set(recipients))
        id_list = list(ids)
        for name in names:
            self.notify(name)
        for i in id_list:
            self._remember_id(i)
        if not names:
            return
        try:
            await self._nc.publish(
                WAKE_SUBJECT,
                _wake_enc.encode(Wake(origin=self._origin, recipients=names, ids=id_list)),
            )
        except Exception as exc:  # NATS down: message.sent wakes them later
            log.warning("could not publish wake: %s", exc)

    def _remember_id(self, message_id: int) -> None:
        self._seen[message_id] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    async def _on_wake(self, msg: Msg) -> None:
        try:
            wake = _wake_dec.decode(msg.data)
        except msgspec.DecodeError:
            return
        if wake.origin == self._origin:
            return
        for i in wake.ids:
            self._remember_id(i)
        for name in wake.recipients:
            self.notify(name)

    async def _on_sent(self, msg: Msg) -> None:
        if not self._events:
            return  # nobody waits here: skip decoding every message event
        try:
            event = _event_dec.decode(msg.data)
        except msgspec.DecodeError:
            return
        message_id = event.data.get("id")
        if isinstance(message_id, int) and message_id in self._seen:
            return
        if event.agent:
            self.notify(event.agent)
