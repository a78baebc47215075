"""The broker's store boundary against a real Postgres: each database error
is translated once, to ``unavailable`` or ``bad_request``."""

from __future__ import annotations

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
