"""The outbox: what was committed reaches HIVE_EVENTS, even after a crash."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace

from hyperhive.common import outbox, subjects
from hyperhive.common.config import Settings
from hyperhive.common.db import create_pool, migrate
from hyperhive.common.jetstream import ensure_streams
from hyperhive.common.wire.events import HiveEvent
from tests.rig import parse_traceparent, span_exporter


@pytest.fixture
async def js(service_nc) -> JetStreamContext:
    """JetStream with the hive's streams (HIVE_EVENTS) in place."""
    js = service_nc.jetstream()
    await ensure_streams(js)
    return js


def _kind(letter: str) -> str:
    """An event kind of this test's own, so that its records are the only ones."""
    return f"test.{letter}{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def _outbox_pool(settings: Settings, schema: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on ``schema`` with the base tables (the outbox) migrated."""
    pool = await create_pool(settings.database, schema)
    try:
        await migrate(pool, "hyperhive.common")
        yield pool
    finally:
        await pool.close()


async def _messages(js, kind: str, count: int, timeout: float = 10.0) -> list[Msg]:
    """The first ``count`` records of ``kind`` in HIVE_EVENTS, as NATS messages."""
    sub = await js.subscribe(subjects.event(kind), ordered_consumer=True)
    got: list[Msg] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got.append(await sub.next_msg(timeout=timeout))
    finally:
        await sub.unsubscribe()
    return got


async def _events_for(js, kind: str, count: int, timeout: float = 10.0) -> list[HiveEvent]:
    msgs = await _messages(js, kind, count, timeout)
    return [msgspec.json.decode(m.data, type=HiveEvent) for m in msgs]


async def test_rows_committed_before_a_crash_are_published_at_next_start(settings, js):
    kind = _kind("k")
    async with _outbox_pool(settings, "obx") as pool:
        # the "crash": state and events committed, nobody published them
        async with pool.acquire() as conn, conn.transaction():
            for i in range(5):
                await outbox.add(conn, outbox.make_event(kind, agent="a", n=i))
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 5
        relay = outbox.OutboxRelay(pool, js, sweep_s=0.2)
        relay.start()
        try:
            events = await _events_for(js, kind, 5)
        finally:
            await relay.stop()
        assert [e.data["n"] for e in events] == [0, 1, 2, 3, 4]
        assert all(e.agent == "a" for e in events)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_republishing_the_same_row_is_deduplicated(settings, js):
    kind = _kind("d")
    event = outbox.make_event(kind, n=1)
    async with _outbox_pool(settings, "obx2") as pool:
        # published, then the service died before deleting the row
        for _ in range(2):
            async with pool.acquire() as conn:
                await outbox.add(conn, event)
            await outbox.OutboxRelay(pool, js).drain()
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.event(kind))
        assert info.state.subjects == {subjects.event(kind): 1}


async def test_rolled_back_transaction_publishes_nothing(settings, js):
    kind = _kind("r")
    async with _outbox_pool(settings, "obx3") as pool:
        try:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, outbox.make_event(kind, n=0))
                # inside the transaction the row is there: the rollback is what drops it
                assert await conn.fetchval("SELECT count(*) FROM outbox") == 1
                raise RuntimeError("handler failed after the insert")
        except RuntimeError:
            pass
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        assert await outbox.OutboxRelay(pool, js).drain() == 0
        # the same write committed is published: the relay and add() do work
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, outbox.make_event(kind, n=1))
        assert await outbox.OutboxRelay(pool, js).drain() == 1
        events = await _events_for(js, kind, 1)
        assert [e.data["n"] for e in events] == [1]
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.event(kind))
        assert info.state.subjects == {subjects.event(kind): 1}  # only the committed one


async def test_a_record_carries_the_trace_of_the_transaction_that_wrote_it(settings, js):
    span_exporter()
    kind = _kind("t")
    async with _outbox_pool(settings, "obx4") as pool:
        with trace.get_tracer("test").start_as_current_span("a change") as span:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, outbox.make_event(kind, n=0))
                await outbox.add_many(conn, [outbox.make_event(kind, n=1)])
        async with pool.acquire() as conn:  # no trace context
            await outbox.add(conn, outbox.make_event(kind, n=2))
        await outbox.OutboxRelay(pool, js).drain()
        msgs = await _messages(js, kind, 3)
        ctx = span.get_span_context()
        traced = [m.headers.get("traceparent") for m in msgs if m.headers]
        assert [parse_traceparent(t) for t in traced if t] == [(ctx.trace_id, ctx.span_id)] * 2
        assert "traceparent" not in (msgs[2].headers or {})
        assert [msgspec.json.decode(m.data, type=HiveEvent).data["n"] for m in msgs] == [0, 1, 2]


async def test_the_relay_vacuums_its_outbox_after_many_deletes(settings, js, monkeypatch):
    # the outbox is a queue: left to autovacuum (once a minute at best), its
    # dead rows slow every drain; the relay vacuums it itself
    monkeypatch.setattr(outbox, "VACUUM_AFTER_ROWS", 50)
    monkeypatch.setattr(outbox, "VACUUM_MIN_INTERVAL_S", 0.0)
    kind = _kind("v")
    async with _outbox_pool(settings, f"obv{uuid.uuid4().hex[:6]}") as pool:

        async def vacuums() -> int:
            # each fetch is a transaction of its own: fresh statistics
            return await pool.fetchval(
                "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass"
            )

        before = await vacuums()
        relay = outbox.OutboxRelay(pool, js, sweep_s=0.2)
        relay.start()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add_many(
                    conn, [outbox.make_event(kind, agent="a", n=i) for i in range(60)]
                )
            relay.kick()
            assert len(await _events_for(js, kind, 60)) == 60
            deadline = asyncio.get_running_loop().time() + 10
            while await vacuums() == before:
                assert asyncio.get_running_loop().time() < deadline, "outbox never vacuumed"
                await asyncio.sleep(0.05)
            # below the threshold: no vacuum of its own
            after = await vacuums()
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, outbox.make_event(kind, agent="a", n=60))
            relay.kick()
            assert len(await _events_for(js, kind, 61)) == 61
            await asyncio.sleep(0.5)
            assert await vacuums() == after
        finally:
            await relay.stop()
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
