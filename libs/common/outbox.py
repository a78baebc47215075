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
import contextlib
import logging
import time
import uuid

import asyncpg
import msgspec
from nats.js import JetStreamContext

from hyperhive.common import actor, subjects
from hyperhive.common.redact import mask_data
from hyperhive.common.telemetry import TRACEPARENT, current_traceparent
from hyperhive.common.wire.events import (
    EVENT_DATA_TYPES,
    EVENT_TAG,
    EventData,
    HiveEvent,
    decode_event,
    encode_event,
    event_fields,
    event_kind,
)

log = logging.getLogger(__name__)


def make_event(what: EventData | str, *, agent: str | None = None, **data: object) -> HiveEvent:
    """A new event with a fresh id, the current time and, when known, who
    caused it (``by``, see :mod:`hyperhive.common.actor`); secrets in its data
    (a message body, a build error quoting a config) are masked: HIVE_EVENTS
    is read by every live view and kept.

    ``what`` is the kind's typed data (:mod:`hyperhive.common.wire.events`),
    or a kind and its fields as keywords, which must then match the kind's type.

    Raises:
        TypeError: fields given beside typed data.
        msgspec.ValidationError: keyword fields that do not match their kind's type.
    """
    if isinstance(what, EventData):
        if data:
            raise TypeError("make_event: typed data takes no keyword fields")
        kind, fields = event_kind(what), event_fields(what)
    else:
        kind, fields = what, data
        if kind in EVENT_DATA_TYPES:  # checked once here, so no publisher writes a bad record
            msgspec.convert({**fields, EVENT_TAG: kind}, EVENT_DATA_TYPES[kind])
    by = actor.current()
    if by and "by" not in fields:
        fields["by"] = by
    return HiveEvent(
        kind=kind, ts=time.time(), agent=agent, data=mask_data(fields), id=uuid.uuid4().hex
    )


_INSERT = "INSERT INTO outbox (subject, payload, msg_id, traceparent) VALUES ($1, $2, $3, $4)"


async def add(conn: asyncpg.Connection, event: HiveEvent) -> None:
    """Queues ``event`` inside the caller's transaction (with the current trace context)."""
    await conn.execute(
        _INSERT,
        subjects.event(event.kind),
        encode_event(event),
        event.id or uuid.uuid4().hex,
        current_traceparent(),
    )


async def add_many(conn: asyncpg.Connection, events: list[HiveEvent]) -> None:
    """Queues several events inside the caller's transaction."""
    traceparent = current_traceparent()
    await conn.executemany(
        _INSERT,
        [
            (subjects.event(e.kind), encode_event(e), e.id or uuid.uuid4().hex, traceparent)
            for e in events
        ],
    )


def masked(payload: bytes) -> bytes:
    """A stored record as it may be published: its data masked
    (``hyperhive.common.redact``). Every row passes here, also those a
    service writes in SQL (the broker's message events carry the body)."""
    try:
        event = decode_event(payload)
    except msgspec.DecodeError:
        log.warning("outbox row is no HiveEvent; published as stored")
        return payload
    return encode_event(msgspec.structs.replace(event, data=mask_data(event.data)))


def _headers(row: asyncpg.Record) -> dict[str, str]:
    headers = {"Nats-Msg-Id": row["msg_id"]}
    if row["traceparent"]:
        headers[TRACEPARENT] = row["traceparent"]
    return headers


# One relay at a time drains a schema's outbox (whichever instance of the
# service takes this transaction-level lock), so that HIVE_EVENTS gets each
# schema's events in outbox order however many instances run.
# The delete commits without waiting for the WAL flush (synchronous_commit
# off for this transaction only): a Postgres crash that loses it brings the
# rows back, published again, which their Nats-Msg-Id makes harmless; an
# fsync per batch slowed the sends that share the disk.
_DRAIN = """
DELETE FROM outbox
WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $1)
  AND pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox'))
  AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
RETURNING id, subject, payload, msg_id, traceparent
"""
LOCKED_RETRY_S = 0.02  # another instance is draining: look again this soon
PUBLISH_TIMEOUT_S = 5.0  # for JetStream's acks of one batch
# The outbox is a queue: every row is deleted soon after its insert, and the
# drain's ``ORDER BY id`` walks the dead index entries at the front of the
# table until a vacuum removes them. Autovacuum visits a database once a
# minute at most (``autovacuum_naptime``), long enough for a busy broker to
# leave a few hundred thousand: measured, the drain then cost 2.9 ms and 2,800
# buffers per batch instead of 0.16 ms and 150, and halved end-to-end
# throughput (bench/broker.py). So the relay vacuums its own small table.
VACUUM_AFTER_ROWS = 5000  # rows deleted since the last vacuum
VACUUM_MIN_INTERVAL_S = 1.0


class OutboxRelay:
    """Publishes committed outbox rows to JetStream, oldest first.

    Each batch is taken and deleted in one transaction that commits only
    after JetStream acknowledged every row of it: a crash or a failed publish
    rolls the delete back, and the rows are published again (the
    ``Nats-Msg-Id`` header makes that harmless). Safe with several instances
    of a service: one of them drains at a time.
    """

    def __init__(
        self, pool: asyncpg.Pool, js: JetStreamContext, *, sweep_s: float = 2.0, batch: int = 256
    ) -> None:
        self._pool = pool
        self._js = js
        self._sweep_s = sweep_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deleted = 0  # rows deleted since the last vacuum
        self._vacuumed_at = time.monotonic()
        self._vacuum: asyncio.Task[None] | None = None

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
        if self._vacuum is not None:
            self._vacuum.cancel()
        for task in (self._task, self._vacuum):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await asyncio.wait_for(self.drain(), timeout=2.0)
        except Exception as exc:
            log.warning("outbox not fully drained at stop: %s", exc)

    async def drain(self) -> int:
        """Publishes every pending row (unless another instance is draining).

        Returns how many rows this call published.
        """
        total = 0
        while True:
            n, _locked = await self._publish_batch()
            total += n
            if n < self._batch:
                return total

    async def _loop(self) -> None:
        while True:
            locked = False
            try:
                total = 0
                while True:
                    n, locked = await self._publish_batch()
                    total += n
                    if n < self._batch:
                        break
                self._deleted += total
                self._vacuum_if_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or Postgres down: the next sweep retries
                log.warning("outbox relay: %s", exc)
            try:
                # another instance is draining: its last batch may end before
                # rows committed here meanwhile, so look again soon
                timeout = LOCKED_RETRY_S if locked else self._sweep_s
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except TimeoutError:
                pass
            self._wake.clear()

    def _vacuum_if_due(self) -> None:
        """Vacuums the outbox, beside the relay, when enough rows were deleted
        (see ``VACUUM_AFTER_ROWS``); one vacuum at a time."""
        now = time.monotonic()
        if (
            self._deleted < VACUUM_AFTER_ROWS
            or now - self._vacuumed_at < VACUUM_MIN_INTERVAL_S
            or (self._vacuum is not None and not self._vacuum.done())
        ):
            return
        self._deleted, self._vacuumed_at = 0, now
        self._vacuum = asyncio.create_task(self._run_vacuum(), name="outbox-vacuum")

    async def _run_vacuum(self) -> None:
        try:
            async with self._pool.acquire() as conn:
                # outside a transaction (asyncpg runs a lone statement so);
                # SKIP_LOCKED: another instance's vacuum is as good as this one
                await conn.execute("VACUUM (SKIP_LOCKED) outbox")
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            # not the owner, or the database is down: autovacuum still runs
            log.warning("outbox vacuum not run: %s", exc)

    async def _publish_batch(self) -> tuple[int, bool]:
        """Publishes and deletes up to one batch of rows.

        Returns how many, and whether rows were left to another instance that
        holds the drain lock.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_DRAIN, self._batch)
            if not rows:
                locked = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox)")
                return 0, bool(locked)
            await self._publish(sorted(rows, key=lambda r: r["id"]))
        return len(rows), False

    async def _publish(self, rows: list[asyncpg.Record]) -> None:
        """Publishes ``rows`` in order and waits for every PubAck.

        Raises (so that the caller's transaction rolls back) if any was not
        acknowledged within ``PUBLISH_TIMEOUT_S``.
        """
        # publish_async: the acks come back on one subscription, without a
        # task and a timer per record as ``publish`` would cost
        acks = [
            await self._js.publish_async(
                r["subject"], masked(bytes(r["payload"])), headers=_headers(r)
            )
            for r in rows
        ]
        done, pending = await asyncio.wait(acks, timeout=PUBLISH_TIMEOUT_S)
        for fut in pending:
            fut.cancel()
        failed = [f.exception() for f in done if f.exception() is not None]
        if pending or failed:
            first = failed[0] if failed else TimeoutError("no PubAck")
            raise RuntimeError(f"{len(pending) + len(failed)} outbox rows not published: {first}")
