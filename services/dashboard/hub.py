"""One HIVE_EVENTS consumer, fanned out in-process to every SSE client.

One follower (:func:`hyperhive.common.follow.follow`) replays the tail of
``HIVE_EVENTS`` at start (backfill) and then follows it live. Each record is
encoded once into an SSE frame and published to a
:class:`~hyperhive.common.sse.Fanout` (the flow, or the changes): 200 browsers
cost one subscription, one encoding per event and one write per browser per
wake, not one consumer each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from nats.js import JetStreamContext

from hyperhive.common import activity, follow, sse, subjects
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
RETRY_MS = 2000  # an EventSource's reconnect delay


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
        self.flow = sse.Fanout(ring, interval_s=coalesce_s, ping_s=ping_s)
        self.changes = sse.Fanout(ring, interval_s=coalesce_s, ping_s=ping_s)
        self._follower: asyncio.Task[None] | None = None
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
        self.flow.close()
        self.changes.close()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower

    def _on_event(self, seq: int, ev: HiveEvent) -> None:
        self.publish(ev, seq)

    def publish(self, ev: HiveEvent, seq: int) -> None:
        """Encodes one event once and hands it to the flow's or the changes' streams."""
        if ev.kind.startswith(MESSAGE_FAMILY):
            record = flow_record(ev, seq)
            parties = (str(record["sender"]), str(record["recipient"]))
            kind = "message" if ev.kind == subjects.EV_MESSAGE_SENT else "status"
            self.flow.publish(sse.Item(seq, sse.json_frame(kind, record, seq), parties))
        else:
            change = {"seq": seq, "kind": ev.kind, "agent": ev.agent, "ts": ev.ts}
            change.update(change_detail(ev))
            frame = sse.json_frame("change", change, seq)
            self.changes.publish(sse.Item(seq, frame, (ev.agent or "",)))
        entry = activity.entry(ev, seq)
        if entry is not None and (not self._activity or seq > self._activity[-1].seq):
            self._activity.append(entry)  # a replayed record read at start is skipped
        for listener in self.listeners:
            listener(ev)

    def activity_entries(self) -> list[activity.Entry] | None:
        """The timeline kept in memory, oldest first; None until it was loaded."""
        return list(self._activity) if self._activity_ready else None

    async def stream(
        self, fanout: sse.Fanout, cursor: int, agent: str | None = None
    ) -> AsyncIterator[bytes]:
        """SSE bytes from ``cursor`` on, live, until the hub stops.

        ``agent`` keeps only items where that agent is a party.
        """
        yield sse.retry(RETRY_MS)
        async for chunk in fanout.follow(cursor, agent or None):
            yield chunk
