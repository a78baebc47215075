"""The outbox: a state change committed to Postgres always reaches HIVE_EVENTS.

A handler adds its event to the ``outbox`` table in the same transaction as
the change (:func:`add`); the service's :class:`OutboxRelay` publishes pending
rows to JetStream, their data masked (:func:`masked`: HIVE_EVENTS holds no
secret), and deletes them once the stream acknowledged them. A crash
between commit and publish leaves the row, which the next start publishes; the
``Nats-Msg-Id`` header makes a re-publish inside the dedupe window harmless.
Each row keeps the ``traceparent`` of the span that wrote it, and the record
carries it as a header, so a consumer joins the trace of the change.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import asyncpg
import msgspec
from nats.js import JetStreamContext

from hyperhive.common import actor, subjects
from hyperhive.common.redact import mask_data
from hyperhive.common.telemetry import TRACEPARENT, current_traceparent
from hyperhive.common.wire.events import HiveEvent

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(HiveEvent)


def make_event(kind: str, *, agent: str | None = None, **data: object) -> HiveEvent:
    """A new event with a fresh id, the current time and, when known, who
    caused it (``by``, see :mod:`hyperhive.common.actor`); secrets in its data
    (a message body, a build error quoting a config) are masked: HIVE_EVENTS
    is read by every live view and kept."""
    by = actor.current()
    if by and "by" not in data:
        data["by"] = by
    return HiveEvent(
        kind=kind, ts=time.time(), agent=agent, data=mask_data(data), id=uuid.uuid4().hex
    )


_INSERT = "INSERT INTO outbox (subject, payload, msg_id, traceparent) VALUES ($1, $2, $3, $4)"


async def add(conn: asyncpg.Connection, event: HiveEvent) -> None:
    """Queues ``event`` inside the caller's transaction (with the current trace context)."""
    await conn.execute(
        _INSERT,
        subjects.event(event.kind),
        _encoder.encode(event),
        event.id or uuid.uuid4().hex,
        current_traceparent(),
    )


async def add_many(conn: asyncpg.Connection, events: list[HiveEvent]) -> None:
    """Queues several events inside the caller's transaction."""
    traceparent = current_traceparent()
    await conn.executemany(
        _INSERT,
        [
            (subjects.event(e.kind), _encoder.encode(e), e.id or uuid.uuid4().hex, traceparent)
            for e in events
        ],
    )


def masked(payload: bytes) -> bytes:
    """A stored record as it may be published: its data masked
    (``hyperhive.common.redact``). Every row passes here, also those a
    service writes in SQL (the broker's message events carry the body)."""
    try:
        event = _decoder.decode(payload)
    except msgspec.DecodeError:
        log.warning("outbox row is no HiveEvent; published as stored")
        return payload
    return _encoder.encode(msgspec.structs.replace(event, data=mask_data(event.data)))


def _headers(row: asyncpg.Record) -> dict[str, str]:
    headers = {"Nats-Msg-Id": row["msg_id"]}
    if row["traceparent"]:
        headers[TRACEPARENT] = row["traceparent"]
    return headers


class OutboxRelay:
    """Publishes committed outbox rows to JetStream, oldest first."""

    def __init__(
        self, pool: asyncpg.Pool, js: JetStreamContext, *, sweep_s: float = 2.0, batch: int = 256
    ) -> None:
        self._pool = pool
        self._js = js
        self._sweep_s = sweep_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        """Says new rows were committed: publish them now, not at the next sweep."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="outbox-relay")

    async def stop(self) -> None:
        """Publishes what it can one last time, then stops."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        try:
            await asyncio.wait_for(self.drain(), timeout=2.0)
        except Exception as exc:
            log.warning("outbox not fully drained at stop: %s", exc)

    async def drain(self) -> int:
        """Publishes every pending row. Returns how many were published."""
        total = 0
        while True:
            n = await self._publish_batch()
            total += n
            if n < self._batch:
                return total

    async def _loop(self) -> None:
        while True:
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or Postgres down: the next sweep retries
                log.warning("outbox relay: %s", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._sweep_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _publish_batch(self) -> int:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, subject, payload, msg_id, traceparent FROM outbox ORDER BY id LIMIT $1",
                self._batch,
            )
        if not rows:
            return 0
        results = await asyncio.gather(
            *(
                self._js.publish(r["subject"], masked(bytes(r["payload"])), headers=_headers(r))
                for r in rows
            ),
            return_exceptions=True,
        )
        done = [
            r["id"]
            for r, res in zip(rows, results, strict=True)
            if not isinstance(res, BaseException)
        ]
        if done:
            async with self._pool.acquire() as conn:
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", done)
        failed = [res for res in results if isinstance(res, BaseException)]
        if failed:
            raise RuntimeError(f"{len(failed)} outbox rows not published: {failed[0]}")
        return len(rows)
