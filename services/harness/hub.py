"""The in-memory side of the turn events: a ring of recent records and live subscribers.

Every record the harness publishes on ``hive.agent.<n>.events`` also goes
here, numbered locally, so the agent page can follow the live tail over SSE
without a NATS subscription (an agent may not subscribe to its own events)
and resume after a reconnect from the last number it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from hyperhive.common.wire.broker import TurnEvent

RING_SIZE = 3000
SUBSCRIBER_QUEUE = 2000


@dataclass(frozen=True, slots=True)
class Record:
    n: int  # local number, increasing within one harness process
    event: TurnEvent


class Subscriber:
    """One live listener (an SSE stream). ``overflowed`` means it fell behind."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Record] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.overflowed = False

    def offer(self, rec: Record) -> None:
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            self.overflowed = True


class Hub:
    def __init__(self, size: int = RING_SIZE) -> None:
        self.boot = uuid.uuid4().hex[:12]  # tells a reconnecting page whether n still counts
        self._ring: deque[Record] = deque(maxlen=size)
        self._n = 0
        self._subs: set[Subscriber] = set()

    def add(self, event: TurnEvent) -> Record:
        self._n += 1
        rec = Record(self._n, event)
        self._ring.append(rec)
        for sub in list(self._subs):
            sub.offer(rec)
        return rec

    def snapshot(self, after: int = 0) -> list[Record]:
        """Records newer than ``after`` still in the ring."""
        return [r for r in self._ring if r.n > after]

    @property
    def oldest_ts(self) -> float | None:
        """Timestamp of the oldest record kept (None when empty)."""
        return self._ring[0].event.ts if self._ring else None

    @property
    def last_n(self) -> int:
        return self._n

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        sub = Subscriber()
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)
