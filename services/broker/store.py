"""The broker's SQL: messages and turn statistics (schema ``broker``).

Every function takes a connection or the pool and returns plain rows or wire
values; transactions are the caller's. Timestamps leave Postgres as epoch
seconds (``float8``) so no datetime conversion runs per row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg

from hyperhive.common.errors import BadRequest, HiveError, Unavailable
from hyperhive.common.wire.broker import TURN_KEY, USAGE_KEYS
from hyperhive.common.wire.states import MessageState

log = logging.getLogger(__name__)

# Errors that mean "the database cannot be used right now", not "this request
# is wrong": a down or restarting server, a dropped connection, a full pool.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    # seen when Postgres shuts down under load: the pool's reset of a
    # connection the server just ended finds it mid-operation ("cannot switch
    # to state 15; another operation (2) is in progress"); the pool drops it
    asyncpg.exceptions.InternalClientError,
)

# Errors that mean "this request holds a value the database cannot take": an
# integer beyond int64, a time outside timestamptz's range (SQLSTATE class 22,
# data exception), or asyncpg refusing to encode an argument (a client-side
# ``DataError``, which is also an ``InterfaceError``: checked first).
_BAD_VALUE: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.exceptions._base.DataError,
)


@contextlib.contextmanager
def db_errors(what: str, *, bad_values: bool = True) -> Iterator[None]:
    """Translates database errors once, at the store boundary.

    Connection-level errors become :class:`Unavailable`; a value the database
    cannot take becomes :class:`BadRequest` (unless ``bad_values`` is false:
    a batch of several requests lets the error through, so that the batch is
    retried item by item and only the bad item fails). Wraps ``async
    with``/``await`` blocks too: the exception of an awaited call passes
    through a plain context manager.
    """
    try:
        yield
    except HiveError:
        raise
    except _BAD_VALUE as exc:
        if not bad_values:
            raise
        raise BadRequest(f"{what}: invalid value: {_first_line(exc)}") from None
    except _UNAVAILABLE as exc:
        raise Unavailable(f"database unavailable, {what} not done: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _columns(t: str = "") -> str:
    """The select list of a message row, columns qualified by ``t`` if given."""
    p = f"{t}." if t else ""
    return f"""
    {p}id, {p}sender, {p}recipient, {p}body, {p}event::text AS event, {p}idempotency_key,
    extract(epoch FROM {p}created_at)::float8 AS created_at,
    extract(epoch FROM {p}delivered_at)::float8 AS delivered_at,
    extract(epoch FROM {p}lease_until)::float8 AS lease_until,
    {p}deliveries,
    extract(epoch FROM {p}acked_at)::float8 AS acked_at,
    {p}traceparent
"""


_COLUMNS = _columns()


async def open_relaxed_pool(url: str, schema: str, max_size: int) -> asyncpg.Pool:
    """A pool whose commits do not wait for the WAL flush (``synchronous_commit=off``).

    For hand-outs, acks and statistics only, never for sends. A broker crash
    loses nothing (Postgres has the commit); a Postgres crash may lose the
    last few hand-outs or acks together with their outbox rows, so the state
    and HIVE_EVENTS stay consistent and the message is handed out again:
    delivery stays at-least-once. Connections open on first use.

    Nothing run on these connections changes session state (no ``SET``,
    ``LISTEN``, advisory locks or cursors), so a connection goes back to the
    pool without asyncpg's reset query, which would cost a second round trip
    per statement; asyncpg still rolls back a transaction left open.
    """
    return await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=max_size,
        server_settings={
            "search_path": schema,
            "synchronous_commit": "off",
            # the hot statements are prepared once per connection; planning
            # each execution anew (custom plans) would cost more than running it
            "plan_cache_mode": "force_generic_plan",
        },
        timeout=5,
        reset=_keep_session,
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The relaxed pool's reset: nothing to undo (see :func:`open_relaxed_pool`)."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    sender: str
    recipient: str
    body: str
    event: str | None = None  # JSON of a system event
    idempotency_key: str | None = None
    traceparent: str | None = None  # of the send: the recipient's turn continues its trace
    # a recv of the recipient is waiting: hand the message to it at once; the
    # recv's traceparent ("" without one)
    hand_to: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of one insert: the message's id and time, whether it is new,
    and the message's row when it was handed out (``NewMessage.hand_to``)."""

    id: int
    ts: float
    created: bool
    handed: asyncpg.Record | None = None


@dataclass(frozen=True, slots=True)
class EventKinds:
    """The HIVE_EVENTS kinds (and their subjects) of message transitions."""

    sent: tuple[str, str]
    delivered: tuple[str, str]
    redelivered: tuple[str, str]
    acked: tuple[str, str]
    body_chars: int


# Each hot-path statement changes messages and queues the matching outbox row
# in one statement: atomic on its own, one round trip, no BEGIN/COMMIT.


def _event_row(src: str, kind: str, body_chars: str) -> str:
    """Select list ``payload, msg_id`` of the HIVE_EVENTS record (HiveEvent JSON)
    of message row ``src`` (which has an ``eid`` column, the event id)."""
    return f"""
        convert_to(json_build_object(
            'kind', {kind}::text,
            'ts', extract(epoch FROM clock_timestamp())::float8,
            'agent', {src}.recipient,
            'data', json_build_object(
                'id', {src}.id,
                'sender', {src}.sender,
                'recipient', {src}.recipient,
                'body', left({src}.body, {body_chars}),
                'deliveries', {src}.deliveries,
                'ts', extract(epoch FROM {src}.created_at)::float8
            ),
            'id', {src}.eid
        )::text, 'UTF8'),
        {src}.eid
    """


_EID = "replace(gen_random_uuid()::text, '-', '') AS eid"

# A send whose recipient has a recv waiting in this broker is handed to it in
# the same statement (``$10``: hand out, ``$11``: that recv's traceparent,
# ``$12``: the lease): stored already delivered, with its ``message.delivered``
# event queued after its ``message.sent``. The waiting recv returns the row
# without a claim of its own (one statement per delivery instead of two).
_INSERT = f"""
WITH input AS (
    SELECT nextval('messages_id_seq') AS id, clock_timestamp() AS at,
        s, r, b, e, k, tp, d, dtp, ord
    FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[],
        $10::bool[], $11::text[]
    ) WITH ORDINALITY AS t(s, r, b, e, k, tp, d, dtp, ord)
), ins AS (
    INSERT INTO messages (
        id, sender, recipient, body, event, idempotency_key, traceparent,
        created_at, deliveries, delivered_at, lease_until
    )
    SELECT id, s, r, b, e, k, tp,
        at,
        CASE WHEN d THEN 1 ELSE 0 END,
        CASE WHEN d THEN at END,
        CASE WHEN d THEN at + make_interval(secs => $12) END
    FROM input ORDER BY ord
    ON CONFLICT (sender, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), ev AS (
    SELECT ins.id, ins.sender, ins.recipient, ins.body, ins.created_at, 0 AS deliveries,
        0 AS step, $7 AS subject, $8 AS kind, ins.traceparent AS tp, {_EID}
    FROM ins
    UNION ALL
    SELECT ins.id, ins.sender, ins.recipient, ins.body, ins.created_at, 1,
        1, $13, $14, input.dtp, {_EID}
    FROM ins JOIN input USING (id) WHERE input.d
), ob AS (
    INSERT INTO outbox (subject, payload, msg_id, traceparent)
    SELECT ev.subject, {_event_row("ev", "ev.kind", "$9")}, ev.tp
    FROM ev ORDER BY ev.id, ev.step
)
SELECT input.id, extract(epoch FROM ins.created_at)::float8 AS ts,
    input.d AND ins.id IS NOT NULL AS handed, {_columns("ins")}
FROM input LEFT JOIN ins USING (id) ORDER BY input.ord
"""

_BY_KEY = """
SELECT id, extract(epoch FROM created_at)::float8 AS ts
FROM messages WHERE sender = $1 AND idempotency_key = $2
"""


async def insert_messages(
    conn: asyncpg.Connection | asyncpg.Pool,
    items: Sequence[NewMessage],
    kinds: EventKinds,
    lease_s: float = 0.0,
) -> list[Stored]:
    """Commits messages and their ``message.sent`` events in one statement.

    Returns one :class:`Stored` per item, in order. An item whose
    ``(sender, idempotency_key)`` already names a message stores nothing and
    gets that message's id with ``created=False``. An item with ``hand_to``
    set is stored handed out for ``lease_s`` (its ``message.delivered`` queued
    with that traceparent) and its :class:`Stored` carries the row.
    """
    subject, kind = kinds.sent
    rows = await conn.fetch(
        _INSERT,
        [m.sender for m in items],
        [m.recipient for m in items],
        [m.body for m in items],
        [m.event for m in items],
        [m.idempotency_key for m in items],
        [m.traceparent for m in items],
        subject,
        kind,
        kinds.body_chars,
        [m.hand_to is not None for m in items],
        [m.hand_to or None for m in items],
        float(lease_s),
        *kinds.delivered,
    )
    out: list[Stored] = []
    for item, row in zip(items, rows, strict=True):
        if row["ts"] is not None:
            out.append(Stored(row["id"], row["ts"], True, row if row["handed"] else None))
            continue
        # the key was taken: by an earlier message, by an item earlier in this
        # batch, or by a transaction that committed while this one waited
        first = await conn.fetchrow(_BY_KEY, item.sender, item.idempotency_key)
        if first is None:
            raise RuntimeError("idempotency key conflict without a visible row")
        out.append(Stored(first["id"], first["ts"], False))
    return out


# One statement hands out messages to a batch of recvs: ``$1``/``$2`` are
# the recipient and the rank (1, 2, ... among that recipient's recvs in the
# batch) of each recv, ``$3`` its traceparent. Each recipient's oldest
# available messages, as many as it has recvs, are locked with SKIP LOCKED
# (a concurrent batch skips them) and the n-th goes to the recv of rank n.
# A recipient that gets nothing gets one row without a message, with the
# seconds until its earliest lease ends (when a waiting recv looks again),
# so that an empty recv costs one statement, not two.
_CLAIM = f"""
WITH req AS (
    SELECT r, rn, tp FROM unnest($1::text[], $2::int[], $3::text[]) AS t(r, rn, tp)
), want AS (
    SELECT r, max(rn) AS n FROM req GROUP BY r
), next AS (
    SELECT n.id, row_number() OVER (PARTITION BY want.r ORDER BY n.id) AS rn
    FROM want CROSS JOIN LATERAL (
        SELECT id FROM messages
        WHERE recipient = want.r AND acked_at IS NULL
          AND (lease_until IS NULL OR lease_until <= clock_timestamp())
        ORDER BY id
        LIMIT want.n
        FOR UPDATE SKIP LOCKED
    ) n
), upd AS (
    UPDATE messages m
    SET deliveries = m.deliveries + 1,
        lease_until = clock_timestamp() + make_interval(secs => $4),
        delivered_at = coalesce(m.delivered_at, clock_timestamp())
    FROM next
    WHERE m.id = next.id
    RETURNING m.*, next.rn, {_EID}
), ob AS (
    INSERT INTO outbox (subject, payload, msg_id, traceparent)
    SELECT
        CASE WHEN upd.deliveries > 1 THEN $7 ELSE $5 END,
        {_event_row("upd", "CASE WHEN upd.deliveries > 1 THEN $8 ELSE $6 END", "$9")},
        req.tp
    FROM upd LEFT JOIN req ON req.r = upd.recipient AND req.rn = upd.rn
    ORDER BY upd.id
)
SELECT
    want.r AS want,
    CASE WHEN upd.id IS NULL THEN (
        SELECT extract(epoch FROM min(m.lease_until) - clock_timestamp())::float8
        FROM messages m
        WHERE m.recipient = want.r AND m.acked_at IS NULL AND m.lease_until IS NOT NULL
    ) END AS next_expiry,
    upd.rn,
    {_columns("upd")}
FROM want LEFT JOIN upd ON upd.recipient = want.r
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """One recv's request for a message: whose, and the recv's trace context."""

    recipient: str
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim got: a message row, or None and when to look again."""

    row: asyncpg.Record | None
    # without a row: seconds until the recipient's earliest running lease
    # ends (None: no lease runs), when the message becomes available again
    next_expiry: float | None = None


async def claim_batch(
    conn: asyncpg.Connection | asyncpg.Pool,
    claims: Sequence[Claim],
    lease_s: float,
    kinds: EventKinds,
) -> list[Claimed]:
    """Hands out, in one statement, the oldest available message of each claim's
    recipient for ``lease_s``; several claims of one recipient get its oldest
    messages in order.

    Available: not acked, and never handed out or its lease expired. Rows
    locked by a concurrent claim are skipped, so no two claims return the same
    message. Queues ``message.delivered`` (or ``.redelivered``) with the
    claim's ``traceparent``. Returns one :class:`Claimed` per claim, in order.
    """
    seen: dict[str, int] = {}
    ranks: list[int] = []
    for c in claims:
        seen[c.recipient] = rank = seen.get(c.recipient, 0) + 1
        ranks.append(rank)
    rows = await conn.fetch(
        _CLAIM,
        [c.recipient for c in claims],
        ranks,
        [c.traceparent for c in claims],
        float(lease_s),
        *kinds.delivered,
        *kinds.redelivered,
        kinds.body_chars,
    )
    got = {(row["recipient"], row["rn"]): row for row in rows if row["rn"] is not None}
    expiry = {row["want"]: row["next_expiry"] for row in rows if row["rn"] is None}
    return [
        Claimed(row)
        if (row := got.get((c.recipient, rank))) is not None
        else Claimed(None, expiry.get(c.recipient))
        for c, rank in zip(claims, ranks, strict=True)
    ]


async def claim_many(
    conn: asyncpg.Connection | asyncpg.Pool,
    claims: Sequence[Claim],
    lease_s: float,
    kinds: EventKinds,
) -> list[asyncpg.Record | None]:
    """The rows of :func:`claim_batch` (None: nothing available), per claim in order."""
    return [c.row for c in await claim_batch(conn, claims, lease_s, kinds)]


# One statement acks a batch: ``$1``/``$2``/``$3`` are each ack's message id,
# recipient and traceparent, no (id, recipient) pair twice. The rows are
# locked in id order, so two batches never wait on each other in a cycle.
_ACK = f"""
WITH req AS (
    SELECT id, r, tp FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(id, r, tp)
), mine AS (
    SELECT m.id, req.tp FROM messages m JOIN req ON m.id = req.id AND m.recipient = req.r
    WHERE m.acked_at IS NULL
    ORDER BY m.id
    FOR UPDATE OF m
), upd AS (
    UPDATE messages m SET acked_at = clock_timestamp(), lease_until = NULL
    FROM mine
    WHERE m.id = mine.id AND m.acked_at IS NULL
    RETURNING m.*, mine.tp, {_EID}
), ob AS (
    INSERT INTO outbox (subject, payload, msg_id, traceparent)
    SELECT $4, {_event_row("upd", "$5", "$6")}, upd.tp
    FROM upd ORDER BY upd.id
)
SELECT upd.id, upd.recipient FROM upd
"""


@dataclass(frozen=True, slots=True)
class Ack:
    """One ack: the message, the acking recipient, the ack's trace context."""

    id: int
    recipient: str
    traceparent: str | None = None


async def ack_many(
    conn: asyncpg.Connection | asyncpg.Pool, acks: Sequence[Ack], kinds: EventKinds
) -> list[bool]:
    """Marks, in one statement, each ack's message acked if it is pending and
    addressed to the ack's recipient, and queues its ``message.acked`` (with the
    ack's ``traceparent``).

    Returns, per ack in order, whether its message is acked by this call
    (False: not pending, or not addressed to that recipient). Two acks of the
    same message by the same recipient both get True; it is acked once.
    """
    unique: dict[tuple[int, str], Ack] = {}
    for a in acks:
        unique.setdefault((a.id, a.recipient), a)
    rows = await conn.fetch(
        _ACK,
        [a.id for a in unique.values()],
        [a.recipient for a in unique.values()],
        [a.traceparent for a in unique.values()],
        *kinds.acked,
        kinds.body_chars,
    )
    done = {(row["id"], row["recipient"]) for row in rows}
    return [(a.id, a.recipient) in done for a in acks]


async def ack(
    conn: asyncpg.Connection | asyncpg.Pool,
    message_id: int,
    recipient: str,
    kinds: EventKinds,
    traceparent: str | None = None,
) -> bool:
    """Acks one message (see :func:`ack_many`)."""
    [acked] = await ack_many(conn, [Ack(message_id, recipient, traceparent)], kinds)
    return acked


def message_state(row: asyncpg.Record) -> MessageState:
    """A message's state, derived from its columns (docs/architecture.md).

    The transitions are the statements above: ``_INSERT`` makes it
    ``committed``; ``_CLAIM`` hands it out (``deliveries`` + 1, a lease), and
    hands it out again once the lease ran out without an ack, still
    ``handed_out``; ``_ACK`` makes it ``acked``; ``_PRUNE`` deletes acked ones.
    """
    if row["acked_at"] is not None:
        return "acked"
    if row["deliveries"] > 0:
        return "handed_out"
    return "committed"


async def get(conn: asyncpg.Connection | asyncpg.Pool, message_id: int) -> asyncpg.Record | None:
    """One message by id."""
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM messages WHERE id = $1", message_id)


async def history(
    pool: asyncpg.Pool, *, agent: str | None, since: float | None, limit: int
) -> list[asyncpg.Record]:
    """Messages sent or received by ``agent`` (all when None), oldest first.

    With ``since``: the first ``limit`` messages created after it. Without:
    the latest ``limit`` messages.
    """
    where = ["true"]
    args: list[object] = []
    if agent is not None:
        args.append(agent)
        where.append(f"(sender = ${len(args)} OR recipient = ${len(args)})")
    if since is not None:
        args.append(since)
        where.append(f"created_at > to_timestamp(${len(args)})")
    args.append(limit)
    cond = " AND ".join(where)
    if since is not None:
        sql = f"SELECT {_COLUMNS} FROM messages WHERE {cond} ORDER BY id LIMIT ${len(args)}"
        return list(await pool.fetch(sql, *args))
    sql = f"SELECT {_COLUMNS} FROM messages WHERE {cond} ORDER BY id DESC LIMIT ${len(args)}"
    return list(reversed(await pool.fetch(sql, *args)))


async def pending(pool: asyncpg.Pool, agent: str, limit: int) -> list[asyncpg.Record]:
    """Messages of ``agent`` not acked yet, oldest first."""
    return list(
        await pool.fetch(
            f"""
            SELECT {_COLUMNS} FROM messages
            WHERE recipient = $1 AND acked_at IS NULL ORDER BY id LIMIT $2
            """,
            agent,
            limit,
        )
    )


async def inbox_depth(conn: asyncpg.Connection | asyncpg.Pool, agent: str) -> int:
    """How many messages of ``agent`` are not acked."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM messages WHERE recipient = $1 AND acked_at IS NULL", agent
        )
    )


# History retention: acked messages created before ``$1`` (unix time), at most
# ``$2`` of them, oldest first. Pending messages are never deleted. Rows a
# concurrent prune (another instance) holds are skipped.
_PRUNE = """
WITH doomed AS (
    SELECT id FROM messages
    WHERE acked_at IS NOT NULL AND created_at < to_timestamp($1)
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), del AS (
    DELETE FROM messages m USING doomed WHERE m.id = doomed.id RETURNING 1
)
SELECT count(*) FROM del
"""


async def prune_batch(conn: asyncpg.Connection, before: float, limit: int) -> int:
    """Deletes up to ``limit`` acked messages created before ``before``; returns how many."""
    return int(await conn.fetchval(_PRUNE, before, limit))


async def insert_stats(
    conn: asyncpg.Connection, agent: str, ts: float, values: Sequence[tuple[str, float]]
) -> None:
    """Stores one turn's statistics as ``(agent, ts, key, value)`` rows."""
    await conn.execute(
        """
        INSERT INTO stats (agent, ts, key, value)
        SELECT $1, to_timestamp($2), k, v FROM unnest($3::text[], $4::float8[]) AS t(k, v)
        """,
        agent,
        ts,
        [k for k, _ in values],
        [v for _, v in values],
    )


async def query_stats(
    pool: asyncpg.Pool,
    *,
    agent: str | None,
    since: float | None,
    key: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The latest ``limit`` stat rows matching the filters, oldest first."""
    where = ["true"]
    args: list[object] = []
    for column, value in (("agent", agent), ("key", key)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if since is not None:
        args.append(since)
        where.append(f"ts > to_timestamp(${len(args)})")
    args.append(limit)
    rows = await pool.fetch(
        f"""
        SELECT agent, extract(epoch FROM ts)::float8 AS ts, key, value FROM stats
        WHERE {" AND ".join(where)} ORDER BY ts DESC, key LIMIT ${len(args)}
        """,
        *args,
    )
    return list(reversed(rows))


async def usage_per_day(
    pool: asyncpg.Pool, *, agent: str | None, since: float | None
) -> list[asyncpg.Record]:
    """Turns and the usage keys added up per agent and UTC day, by day then agent."""
    sums = ",\n".join(
        f"coalesce(sum(value) FILTER (WHERE key = '{k}'), 0) AS {k}" for k in USAGE_KEYS
    )
    args: list[object] = [[*USAGE_KEYS, TURN_KEY]]
    where = ["key = ANY($1::text[])"]
    if agent is not None:
        args.append(agent)
        where.append(f"agent = ${len(args)}")
    if since is not None:
        args.append(since)
        where.append(f"ts > to_timestamp(${len(args)})")
    return list(
        await pool.fetch(
            f"""
            SELECT agent, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
                   count(*) FILTER (WHERE key = '{TURN_KEY}') AS turns,
                   {sums}
            FROM stats WHERE {" AND ".join(where)}
            GROUP BY 1, 2 ORDER BY 2, 1
            """,
            *args,
        )
    )
