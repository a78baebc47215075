"""The outbox: what was committed reaches HIVE_EVENTS, even after a crash."""

import asyncio
import uuid

import msgspec
from opentelemetry import trace

from hyperhive.common import outbox, subjects
from hyperhive.common.db import create_pool, migrate
from hyperhive.common.jetstream import ensure_streams
from hyperhive.common.wire.events import HiveEvent
from tests.rig import parse_traceparent, span_exporter


async def _events_for(js, kind: str, count: int, timeout: float = 10.0) -> list[HiveEvent]:
    sub = await js.subscribe(subjects.event(kind), ordered_consumer=True)
    got: list[HiveEvent] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                msg = await sub.next_msg(timeout=timeout)
                got.append(msgspec.json.decode(msg.data, type=HiveEvent))
    finally:
        await sub.unsubscribe()
    return got


async def test_rows_committed_before_a_crash_are_published_at_next_start(settings, service_nc):
    js = service_nc.jetstream()
    await ensure_streams(js)
    kind = f"test.k{uuid.uuid4().hex[:8]}"
    pool = await create_pool(settings.database, "obx")
    try:
        await migrate(pool, "hyperhive.common")
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
    finally:
        await pool.close()


async def test_republishing_the_same_row_is_deduplicated(settings, service_nc):
    js = service_nc.jetstream()
    await ensure_streams(js)
    kind = f"test.d{uuid.uuid4().hex[:8]}"
    event = outbox.make_event(kind, n=1)
    pool = await create_pool(settings.database, "obx2")
    try:
        await migrate(pool, "hyperhive.common")
        # published, then the service died before deleting the row
        for _ in range(2):
            async with pool.acquire() as conn:
                await outbox.add(conn, event)
            await outbox.OutboxRelay(pool, js).drain()
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.event(kind))
        assert info.state.subjects == {subjects.event(kind): 1}
    finally:
        await pool.close()


async def test_rolled_back_transaction_publishes_nothing(settings, service_nc):
    js = service_nc.jetstream()
    await ensure_streams(js)
    kind = f"test.r{uuid.uuid4().hex[:8]}"
    pool = await create_pool(settings.database, "obx3")
    try:
        await migrate(pool, "hyperhive.common")
        try:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, outbox.make_event(kind))
                raise RuntimeError("handler failed after the insert")
        except RuntimeError:
            pass
        assert await outbox.OutboxRelay(pool, js).drain() == 0
    finally:
        await pool.close()


async def test_a_record_carries_the_trace_of_the_transaction_that_wrote_it(settings, service_nc):
    span_exporter()
    js = service_nc.jetstream()
    await ensure_streams(js)
    kind = f"test.t{uuid.uuid4().hex[:8]}"
    pool = await create_pool(settings.database, "obx4")
    try:
        await migrate(pool, "hyperhive.common")
        with trace.get_tracer("test").start_as_current_span("a change") as span:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, outbox.make_event(kind, n=0))
                await outbox.add_many(conn, [outbox.make_event(kind, n=1)])
        async with pool.acquire() as conn:  # no trace context
            await outbox.add(conn, outbox.make_event(kind, n=2))
        await outbox.OutboxRelay(pool, js).drain()
        sub = await js.subscribe(subjects.event(kind), ordered_consumer=True)
        try:
            msgs = [await sub.next_msg(timeout=10) for _ in range(3)]
        finally:
            await sub.unsubscribe()
        ctx = span.get_span_context()
        traced = [m.headers.get("traceparent") for m in msgs if m.headers]
        assert [parse_traceparent(t) for t in traced if t] == [(ctx.trace_id, ctx.span_id)] * 2
        assert "traceparent" not in (msgs[2].headers or {})
        assert [msgspec.json.decode(m.data, type=HiveEvent).data["n"] for m in msgs] == [0, 1, 2]
    finally:
        await pool.close()
