"""One HIVE_EVENTS consumer, fanned out in-process to every SSE client.

One follower (:func:`hyperhive.common.follow.follow`) replays the tail of
``HIVE_EVENTS`` at start (backfill) and then follows it live. Each record is
encoded once into an SSE frame and appended to a ring; clients keep a cursor
into the ring and are woken together at most every ``coalesce`` seconds, so 200 browsers cost one
subscription and a few hundred small writes per second, not one consumer each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from nats.js import JetStreamContext

from hyperhive.common import activity, follow, subjects
from hyperhive.common.errors import HiveError
from hyperhive.common.wire.events import (
    ApprovalEventData,
    HiveEvent,
    MessageEventData,
    QuestionAnswered,
    QuestionAsked,
    event_data,
)

log = logging.getLogger(__name__)

MESSAGE_FAMILY = "message."
BODY_LIMIT = 2000  # events already carry at most this much; never trust it
ACTIVITY_RING = 1000  # timeline entries kept in memory
DETAIL_LIMIT = 200  # of a question, in a change record (a notification's body)


@dataclass(frozen=True, slots=True)
class Item:
    """One SSE frame with what clients filter on."""

    seq: int  # HIVE_EVENTS stream sequence: the SSE id, survives restarts
    parties: tuple[str, ...]  # sender, recipient (flow) or the agent (changes)
    frame: bytes


class Ring:
    """An append-only window of items addressed by a running index."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._items: list[Item] = []
        self._base = 0  # running index of _items[0]

    @property
    def end(self) -> int:
        """The index the next item will get (a cursor at "now")."""
        return self._base + len(self._items)

    def append(self, item: Item) -> None:
        self._items.append(item)
        if len(self._items) >= 2 * self.size:  # trim in bulk: amortised O(1)
            drop = len(self._items) - self.size
            del self._items[:drop]
            self._base += drop

    def since(self, cursor: int) -> list[Item]:
        """Items from ``cursor`` on (the oldest kept if the cursor fell behind)."""
        return self._items[max(0, cursor - self._base) :]

    def tail(self, n: int) -> int:
        """A cursor that yields at most the last ``n`` items."""
        return max(self._base, self.end - n)

    def after_seq(self, seq: int) -> int:
        """A cursor at the first item whose stream sequence is above ``seq``."""
        index = len(self._items)
        while index > 0 and self._items[index - 1].seq > seq:
            index -= 1
        return self._base + index


def sse_frame(event: str, data: object, seq: int | None = None) -> bytes:
    """An encoded SSE frame; ``data`` becomes one JSON line."""
    head = f"id: {seq}\n" if seq is not None else ""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{head}event: {event}\ndata: {payload}\n\n".encode()


def flow_record(ev: HiveEvent, seq: int) -> dict[str, object]:
    """The browser's view of a ``message.*`` event."""
    record: dict[str, object] = {"seq": seq, "kind": ev.kind, "ts": ev.ts}
    data = event_data(ev)
    if not isinstance(data, MessageEventData):  # a record this version cannot read
        return record | {"id": None, "sender": "", "recipient": ev.agent or ""} | _NO_BODY
    return record | {
        "id": data.id,
        "sender": data.sender,
        "recipient": data.recipient,
        "body": data.body[:BODY_LIMIT],
        "deliveries": data.deliveries,
    }


_NO_BODY: dict[str, object] = {"body": None, "deliveries": 0}


def change_detail(ev: HiveEvent) -> dict[str, object]:
    """What a browser notification of a waiting decision says: the approval's
    or question's id, and its kind or the start of the question."""
    match event_data(ev):
        case QuestionAsked(id=ref, question=text):
            return {"id": ref, "detail": text[:DETAIL_LIMIT]}
        case ApprovalEventData(id=ref, kind=what):
            return {"id": ref, "detail": what}
        case QuestionAnswered(id=ref):
            return {"id": ref}
    return {}


class EventHub:
    """Follows HIVE_EVENTS; hands frames to any number of SSE streams."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        backfill_events: int,
        ring: int,
        coalesce_s: float,
        ping_s: float,
    ) -> None:
        self._js = js
        self._backfill_events = backfill_events
        self._coalesce_s = coalesce_s
        self._ping_s = ping_s
        self.flow = Ring(ring)
        self.changes = Ring(ring)
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._follower: asyncio.Task[None] | None = None
        self.closed = False
        self.listeners: list[Callable[[HiveEvent], None]] = []
        # the activity timeline, newest last: the last day read at start, then live
        self._activity: deque[activity.Entry] = deque(maxlen=ACTIVITY_RING)
        self._activity_ready = False

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context it reads from (for other readers of the stream)."""
        return self._js

    async def start(self) -> None:
        """Reads the last day of the activity timeline, then subscribes from
        ``backfill_events`` records back, then live."""
        try:
            older = await activity.read(self._js, limit=ACTIVITY_RING)
        except HiveError as exc:  # the section reads the stream itself meanwhile
            log.warning("activity timeline not preloaded: %s", exc)
        else:
            self._activity.extend(older)
            self._activity_ready = True
        info = await self._js.stream_info(subjects.EVENTS_STREAM)
        after = max(0, info.state.last_seq - self._backfill_events)
        self._follower = await follow.start_following(
            self._js, self._on_event, after_seq=after, name="dashboard-events"
        )

    async def stop(self) -> None:
        """Ends every SSE stream and the subscription."""
        self.closed = True
        self._notify()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower

    def _on_event(self, seq: int, ev: HiveEvent) -> None:
        self.publish(ev, seq)

    def publish(self, ev: HiveEvent, seq: int) -> None:
        """Adds one event to the right ring and schedules a wake-up."""
        if ev.kind.startswith(MESSAGE_FAMILY):
            record = flow_record(ev, seq)
            parties = (str(record["sender"]), str(record["recipient"]))
            kind = "message" if ev.kind == subjects.EV_MESSAGE_SENT else "status"
            self.flow.append(Item(seq, parties, sse_frame(kind, record, seq)))
        else:
            change = {"seq": seq, "kind": ev.kind, "agent": ev.agent, "ts": ev.ts}
            change.update(change_detail(ev))
            self.changes.append(Item(seq, (ev.agent or "",), sse_frame("change", change, seq)))
        entry = activity.entry(ev, seq)
        if entry is not None and (not self._activity or seq > self._activity[-1].seq):
            self._activity.append(entry)  # a replayed record read at start is skipped
        for listener in self.listeners:
            listener(ev)
        if not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().call_later(self._coalesce_s, self._notify)

    def activity_entries(self) -> list[activity.Entry] | None:
        """The timeline kept in memory, oldest first; None until it was loaded."""
        return list(self._activity) if self._activity_ready else None

    def _notify(self) -> None:
        self._wake_pending = False
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def stream(
        self, ring: Ring, cursor: int, agent: str | None = None
    ) -> AsyncIterator[bytes]:
        """SSE bytes from ``cursor`` on, live, until the hub stops.

        ``agent`` keeps only items where that agent is a party. Items that
        arrived together go out in one write.
        """
        yield b"retry: 2000\n\n"
        while not self.closed:
            wake = self._wake  # taken before reading: no item can slip between
            items = ring.since(cursor)
            cursor = ring.end
            if agent:
                chunk = b"".join(i.frame for i in items if agent in i.parties)
            else:
                chunk = b"".join(i.frame for i in items)
            if chunk:
                yield chunk
                continue
            try:
                async with asyncio.timeout(self._ping_s):
                    await wake.wait()
            except TimeoutError:
                yield b": ping\n\n"
