"""The broker's store boundary against a real Postgres: each database error
is translated once, to ``unavailable`` or ``bad_request``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from hyperhive.broker import store
from hyperhive.broker.store import NewMessage, db_errors
from hyperhive.common.config import Settings
from hyperhive.common.db import create_pool, migrate
from hyperhive.common.errors import BadRequest, Unavailable

KINDS = store.EventKinds(
    sent=("hive.events.message.sent", "message.sent"),
    delivered=("hive.events.message.delivered", "message.delivered"),
    redelivered=("hive.events.message.redelivered", "message.redelivered"),
    acked=("hive.events.message.acked", "message.acked"),
    body_chars=100,
)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database, "broker")
    await migrate(pool, "hyperhive.broker")
    yield pool
    await pool.close()


async def test_values_postgres_cannot_take_are_bad_requests(pool: asyncpg.Pool):
    # beyond int64: refused by asyncpg before it is sent
    with pytest.raises(BadRequest, match="status: invalid value"):
        with db_errors("status"):
            await store.get(pool, 2**63)
    with pytest.raises(BadRequest, match="ack: invalid value"):
        with db_errors("ack"):
            await store.ack(pool, -(2**63) - 1, "a", KINDS)
    # beyond timestamptz: refused by Postgres (SQLSTATE class 22)
    with pytest.raises(BadRequest, match="history: invalid value: timestamp out of range"):
        with db_errors("history"):
            await store.history(pool, agent=None, since=1e300, limit=10)
    with pytest.raises(BadRequest, match="stats: invalid value"):
        with db_errors("stats"):
            await store.query_stats(pool, agent=None, since=-1e300, key=None, limit=10)
    assert await pool.fetchval("SELECT 1") == 1  # the pool is fine afterwards


async def test_a_bad_value_in_a_batch_passes_through_for_a_retry_one_by_one(pool: asyncpg.Pool):
    good = NewMessage(sender="a", recipient="b", body="fine")
    bad = NewMessage(sender="a", recipient="b", body="fine", event='{"detail": "\\u0000"}')
    with pytest.raises(asyncpg.DataError):
        with db_errors("send", bad_values=False):
            await store.insert_messages(pool, [good, bad], KINDS)
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0  # one statement: all or none
    with pytest.raises(BadRequest, match="send: invalid value"):
        with db_errors("send"):
            await store.insert_messages(pool, [bad], KINDS)
    [stored] = await store.insert_messages(pool, [good], KINDS)
    assert stored.created


async def test_connection_errors_are_unavailable(settings: Settings):
    gone = await asyncpg.connect(settings.database.url)
    await gone.close()
    with pytest.raises(Unavailable, match="database unavailable, inbox not done"):
        with db_errors("inbox"):
            await gone.fetch("SELECT 1")


def test_a_connection_the_server_ended_mid_operation_is_unavailable():
    # what asyncpg raises when the pool resets a connection that Postgres
    # ended during a fast shutdown (seen in the stop-under-load test)
    state = "cannot switch to state 15; another operation (2) is in progress"
    with pytest.raises(Unavailable, match="database unavailable, ack not done: cannot switch"):
        with db_errors("ack"):
            raise asyncpg.exceptions.InternalClientError(state)


async def _send(pool: asyncpg.Pool, recipient: str, n: int) -> list[int]:
    items = [NewMessage(sender="a", recipient=recipient, body=f"m{i}") for i in range(n)]
    return [s.id for s in await store.insert_messages(pool, items, KINDS)]


async def _events(pool: asyncpg.Pool, kind: str) -> list[tuple[int, str | None]]:
    """(message id, traceparent) of each queued outbox record of ``kind``, in order."""
    rows = await pool.fetch(
        """
        SELECT (convert_from(payload, 'UTF8')::json #>> '{data,id}')::bigint AS msg, traceparent
        FROM outbox WHERE subject = $1 ORDER BY outbox.id
        """,
        f"hive.events.{kind}",
    )
    return [(r["msg"], r["traceparent"]) for r in rows]


async def test_claims_in_one_batch_get_their_recipients_oldest_messages_in_order(
    pool: asyncpg.Pool,
):
    b = await _send(pool, "b", 3)
    [c] = await _send(pool, "c", 1)
    claims = [
        store.Claim("b", "tp-b1"),
        store.Claim("c", "tp-c"),
        store.Claim("b", "tp-b2"),
        store.Claim("b"),
        store.Claim("b", "tp-none"),
    ]
    rows = await store.claim_many(pool, claims, 60, KINDS)
    assert [r and r["id"] for r in rows] == [b[0], c, b[1], b[2], None]
    assert all(r["deliveries"] == 1 for r in rows if r is not None)
    # one delivered record per hand-out, with the trace context of its own recv
    delivered = await _events(pool, "message.delivered")
    assert sorted(delivered) == sorted(
        [(b[0], "tp-b1"), (c, "tp-c"), (b[1], "tp-b2"), (b[2], None)]
    )
    # handed out: hidden while the lease runs
    assert await store.claim_many(pool, [store.Claim("b"), store.Claim("c")], 60, KINDS) == [
        None,
        None,
    ]
    # an empty claim says when the recipient's first lease ends (None: no lease)
    empty = await store.claim_batch(pool, [store.Claim("b"), store.Claim("nobody")], 60, KINDS)
    assert [c.row for c in empty] == [None, None]
    assert empty[0].next_expiry is not None and 50 < empty[0].next_expiry <= 60
    assert empty[1].next_expiry is None


async def test_a_lease_that_ran_out_is_handed_out_again_as_a_redelivery(pool: asyncpg.Pool):
    [m] = await _send(pool, "b", 1)
    first = await claim_next(pool, "b", 0, KINDS)  # the lease ends at once
    again = await claim_next(pool, "b", 60, KINDS, "tp-again")
    assert first is not None and again is not None
    assert (first["id"], again["id"], again["deliveries"]) == (m, m, 2)
    assert await _events(pool, "message.redelivered") == [(m, "tp-again")]
    assert await claim_next(pool, "b", 60, KINDS) is None


async def test_concurrent_claim_batches_never_hand_out_one_message_twice(settings: Settings):
    pool = await create_pool(settings.database, "broker")
    await migrate(pool, "hyperhive.broker")
    relaxed = await store.open_relaxed_pool(settings.database.url, "broker", 8)
    try:
        ids = await _send(pool, "b", 40)
        batches = await asyncio.gather(
            *(store.claim_many(relaxed, [store.Claim("b")] * 3, 60, KINDS) for _ in range(20))
        )
        got = [r["id"] for rows in batches for r in rows if r is not None]
        assert sorted(got) == ids  # 60 claims for 40 messages: each handed out once
        assert len(await _events(pool, "message.delivered")) == 40
    finally:
        await relaxed.close()
        await pool.close()


async def test_acks_in_one_batch_count_only_pending_messages_of_the_acking_recipient(
    pool: asyncpg.Pool,
):
    m1, m2 = await _send(pool, "b", 2)
    assert await store.ack(pool, m2, "b", KINDS)
    acks = [
        store.Ack(m1, "c", "tp-wrong"),  # not c's: refused, before and after the right one
        store.Ack(m1, "b", "tp-first"),
        store.Ack(m1, "b", "tp-twice"),  # the same ack twice: acked once
        store.Ack(m2, "b"),  # already acked
        store.Ack(2**40, "b"),  # no such message
    ]
    assert await store.ack_many(pool, acks, KINDS) == [False, True, True, False, False]
    assert await _events(pool, "message.acked") == [(m2, None), (m1, "tp-first")]
    row = await store.get(pool, m1)
    assert row is not None and row["acked_at"] is not None and row["lease_until"] is None
    assert await store.ack_many(pool, [store.Ack(m1, "b")], KINDS) == [False]


async def test_the_relaxed_pool_hands_out_clean_connections_without_a_reset_query(
    settings: Settings,
):
    pool = await create_pool(settings.database, "broker")
    await migrate(pool, "hyperhive.broker")
    relaxed = await store.open_relaxed_pool(settings.database.url, "broker", 1)
    try:
        conn = await relaxed.acquire()
        pid = conn.get_server_pid()
        tx = conn.transaction()
        await tx.start()  # left open: asyncpg must still roll it back
        await conn.execute("INSERT INTO stats VALUES ('a', now(), 'k', 1)")
        await relaxed.release(conn)
        async with relaxed.acquire() as again:
            assert again.get_server_pid() == pid  # the same session, reused
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT count(*) FROM stats") == 0
            assert await again.fetchval("SHOW synchronous_commit") == "off"
    finally:
        await relaxed.close()
        await pool.close()


async def claim_next(
    pool: asyncpg.Pool,
    recipient: str,
    lease_s: float,
    kinds: store.EventKinds,
    tp: str | None = None,
) -> asyncpg.Record | None:
    """The oldest available message of ``recipient``, handed out (one claim)."""
    [row] = await store.claim_many(pool, [store.Claim(recipient, tp)], lease_s, kinds)
    return row


async def test_a_send_handed_to_a_waiting_recv_is_stored_delivered_with_both_events(
    pool: asyncpg.Pool,
):
    items = [
        NewMessage(sender="a", recipient="b", body="handed", traceparent="tp-send", hand_to="tp-r"),
        NewMessage(sender="a", recipient="c", body="kept", traceparent="tp-send2"),
        NewMessage(sender="a", recipient="b", body="no trace", hand_to=""),
    ]
    handed, kept, untraced = await store.insert_messages(pool, items, KINDS, 60)
    assert handed.created and kept.created and untraced.created
    assert kept.handed is None
    for stored, body in ((handed, "handed"), (untraced, "no trace")):
        row = stored.handed
        assert row is not None and row["id"] == stored.id and row["body"] == body
        assert row["deliveries"] == 1 and row["recipient"] == "b"
        assert row["created_at"] == pytest.approx(stored.ts)
        assert row["delivered_at"] >= stored.ts and row["lease_until"] >= row["delivered_at"] + 59
    # handed out: no claim gets it; the one kept for c is available
    assert await claim_next(pool, "b", 60, KINDS) is None
    got = await claim_next(pool, "c", 60, KINDS)
    assert got is not None and got["id"] == kept.id and got["deliveries"] == 1
    outbox = await pool.fetch("SELECT subject, payload, traceparent FROM outbox ORDER BY id")
    records = [
        (r["subject"], json.loads(r["payload"])["data"]["id"], r["traceparent"]) for r in outbox
    ]
    sent, delivered = KINDS.sent[0], KINDS.delivered[0]
    assert records == [
        (sent, handed.id, "tp-send"),
        (delivered, handed.id, "tp-r"),
        (sent, kept.id, "tp-send2"),
        (sent, untraced.id, None),
        (delivered, untraced.id, None),
        (delivered, kept.id, None),  # the claim's
    ]
    assert [json.loads(r["payload"])["data"]["deliveries"] for r in outbox] == [0, 1, 0, 0, 1, 1]
