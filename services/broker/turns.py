"""Backfill of an agent's turn events from ``HIVE_TURNS``.

An agent page reloads or its harness restarts: it asks for the events of its
own subject after the last stream sequence it saw. The newest ``limit``
events are returned (a page wants the tail, not the first page of history).
An ephemeral consumer filtered on the agent's subject finds them; when more
match than fit, a headers-only pass finds where the tail starts without
moving the event bodies.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

import msgspec
import nats.errors
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hyperhive.common import subjects
from hyperhive.common.errors import BadRequest, Unavailable
from hyperhive.common.rpc import Call
from hyperhive.common.wire.broker import TurnEvent, TurnsReply, TurnsRequest

log = logging.getLogger(__name__)

MAX_LIMIT = 5000
_decoder = msgspec.json.Decoder(TurnEvent)
_FETCH = 256  # messages per pull request
_FETCH_TIMEOUT_S = 5.0


class Turns:
    """``hive.agent.<n>.turns``: the calling agent's own turn events."""

    def __init__(self, js: JetStreamContext, max_bytes: int) -> None:
        self._js = js
        self._max_bytes = max_bytes

    async def handle(self, req: TurnsRequest, call: Call) -> TurnsReply:
        if req.after_seq < 0:
            raise BadRequest("after_seq must be >= 0")
        if req.limit <= 0:
            raise BadRequest("limit must be > 0")
        try:
            return await backfill(self._js, call.agent, req.after_seq, req.limit, self._max_bytes)
        except (nats.errors.Error, OSError) as exc:
            raise Unavailable(f"turn history unavailable: {exc or type(exc).__name__}") from None


async def backfill(
    js: JetStreamContext, agent: str, after_seq: int, limit: int, max_bytes: int
) -> TurnsReply:
    """The newest ``limit`` events of ``agent`` with a stream sequence above ``after_seq``.

    ``max_bytes`` bounds the encoded events (a NATS reply has a size limit);
    the oldest are dropped first. ``more`` says events were left out.
    """
    limit = max(0, min(limit, MAX_LIMIT))
    subject = subjects.agent(agent, subjects.AGENT_EVENTS)
    start = max(after_seq, 0) + 1
    if limit == 0:
        return TurnsReply()
    async with _consumer(js, subject, start, headers_only=False) as (sub, pending):
        if pending <= limit:
            raw = await _take(sub, pending)
            more = False
        else:
            raw = None
            more = True
    if raw is None:
        # more than fit: find the sequence of the first event of the tail
        async with _consumer(js, subject, start, headers_only=True) as (sub, pending):
            skipped = await _take(sub, pending - limit)
        start = skipped[-1][0] + 1 if skipped else start
        async with _consumer(js, subject, start, headers_only=False) as (sub, pending):
            raw = await _take(sub, min(pending, limit))
    events: list[TurnEvent] = []
    for seq, data in raw:
        try:
            event = _decoder.decode(data)
        except msgspec.DecodeError:
            continue  # not a TurnEvent: an agent can publish anything on its subject
        event.seq = seq
        events.append(event)
    total = 0
    keep = len(events)
    for i in range(len(events) - 1, -1, -1):
        total += len(msgspec.json.encode(events[i])) + 1
        if total > max_bytes:
            keep = len(events) - 1 - i
            more = True
            break
    return TurnsReply(events=events[len(events) - keep :], more=more)


@contextlib.asynccontextmanager
async def _consumer(js: JetStreamContext, subject: str, start_seq: int, *, headers_only: bool):
    name = f"turns-{uuid.uuid4().hex[:16]}"
    config = ConsumerConfig(
        name=name,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_policy=AckPolicy.NONE,
        headers_only=headers_only or None,
        inactive_threshold=30.0,  # the server removes it if we die before deleting it
        mem_storage=True,
    )
    info = await js.add_consumer(subjects.TURNS_STREAM, config)
    try:
        sub = await js.pull_subscribe_bind(durable=None, stream=subjects.TURNS_STREAM, name=name)
        try:
            yield sub, int(info.num_pending or 0)
        finally:
            await sub.unsubscribe()
    finally:
        with contextlib.suppress(NotFoundError, NatsTimeout):
            await js.delete_consumer(subjects.TURNS_STREAM, name)


async def _take(sub: JetStreamContext.PullSubscription, count: int) -> list[tuple[int, bytes]]:
    """The next ``count`` messages as ``(stream sequence, data)``."""
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        try:
            msgs = await sub.fetch(batch=min(_FETCH, count - len(out)), timeout=_FETCH_TIMEOUT_S)
        except NatsTimeout:
            log.warning("turn backfill stopped early: %d of %d fetched", len(out), count)
            break
        out.extend((m.metadata.sequence.stream, m.data) for m in msgs)
    return out
