"""SQL of the approvals service: the ``approvals`` and ``questions`` tables.

State transitions are guarded in SQL (``UPDATE … WHERE state = … RETURNING``)
so that of two concurrent callers exactly one wins; the loser gets ``None``
and the handler turns it into a ``Conflict``. Events go into the outbox in the
same transaction as the change they describe.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final, Literal

import asyncpg

from hyperhive.common import outbox
from hyperhive.common.outbox import make_event
from hyperhive.common.wire.approvals import ApprovalInfo, QuestionInfo
from hyperhive.common.wire.events import (
    ApprovalApproved,
    ApprovalEventData,
    ApprovalQueuedEvent,
    ApprovalResolvedEvent,
    HiveEvent,
    QuestionAnswered,
    QuestionAsked,
)
from hyperhive.common.wire.states import (  # noqa: F401 (the states, as store.X)
    APPLY_COMMIT,
    APPROVED,
    DENIED,
    DEPLOYED,
    FAILED,
    PENDING,
    SPAWN,
    ApprovalState,
)

_COLUMNS: Final = (
    "id, kind, agent, commit_ref, fetched_sha, base_sha, state, note, error, tag, "
    "tagged, notified, pinned, attempts, created_at, approved_at, resolved_at, "
    "decided_by, decided_at, host"
)


def ts(value: datetime | None) -> float | None:
    """A timestamptz as epoch seconds (None stays None)."""
    return value.timestamp() if value is not None else None


def approval_info(row: asyncpg.Record) -> ApprovalInfo:
    """The wire form of an approvals row."""
    return ApprovalInfo(
        id=row["id"],
        kind=row["kind"],
        agent=row["agent"],
        state=row["state"],
        commit_ref=row["commit_ref"],
        fetched_sha=row["fetched_sha"],
        note=row["note"],
        error=row["error"],
        tag=row["tag"],
        created_at=ts(row["created_at"]) or 0.0,
        resolved_at=ts(row["resolved_at"]),
        decided_by=row["decided_by"],
        decided_at=ts(row["decided_at"]),
        host=row["host"],
    )


def _event(kind: type[ApprovalEventData], row: asyncpg.Record) -> HiveEvent:
    """The ``approval.*`` event of ``kind`` recording ``row``."""
    data = kind(
        id=row["id"],
        kind=row["kind"],
        state=row["state"],
        sha=row["fetched_sha"],
        ref=row["commit_ref"],
        tag=row["tag"],
        note=row["note"],
        error=row["error"][:2000],
        decided_by=row["decided_by"],
        decided_at=ts(row["decided_at"]),
    )
    return make_event(data, agent=row["agent"])


# --- approvals ---------------------------------------------------------------


async def queue(
    pool: asyncpg.Pool,
    *,
    kind: str,
    agent: str,
    commit_ref: str = "",
    fetched_sha: str = "",
    host: str = "",
) -> asyncpg.Record:
    """Inserts a pending approval and its ``approval.queued`` event.

    A row with a ``fetched_sha`` starts unpinned: the caller writes
    ``proposal/<id>`` after this commits, then :func:`mark_pinned`.

    Raises:
        asyncpg.UniqueViolationError: an open spawn for the same name exists.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO approvals (kind, agent, commit_ref, fetched_sha, pinned, host)"
            f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
            kind,
            agent,
            commit_ref,
            fetched_sha,
            not fetched_sha,
            host,
        )
        assert row is not None
        if fetched_sha:
            row = await conn.fetchrow(
                f"UPDATE approvals SET tag = 'proposal/' || id WHERE id = $1 RETURNING {_COLUMNS}",
                row["id"],
            )
            assert row is not None
        await outbox.add(conn, _event(ApprovalQueuedEvent, row))
    return row


async def get(pool: asyncpg.Pool | asyncpg.Connection, approval_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1", approval_id)


async def list_approvals(
    pool: asyncpg.Pool, state: ApprovalState | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first; every state when ``state`` is None."""
    return await pool.fetch(
        f"SELECT {_COLUMNS} FROM approvals WHERE ($1::text IS NULL OR state = $1)"
        f" ORDER BY id DESC LIMIT $2",
        state,
        limit,
    )


async def begin(
    conn: asyncpg.Connection, approval_id: int, decided_by: str
) -> asyncpg.Record | None:
    """pending → approved (by ``decided_by``, now) and its ``approval.approved``
    event, inside the caller's transaction. None if not pending.

    Raises:
        asyncpg.UniqueViolationError: another approval of the agent is in flight.
    """
    row = await conn.fetchrow(
        f"UPDATE approvals SET state = 'approved', approved_at = now(), attempts = attempts + 1,"
        f" decided_by = $2, decided_at = now()"
        f" WHERE id = $1 AND state = 'pending' RETURNING {_COLUMNS}",
        approval_id,
        decided_by,
    )
    if row is not None:
        await outbox.add(conn, _event(ApprovalApproved, row))
    return row


async def try_lock_agent(conn: asyncpg.Connection, agent: str) -> bool:
    """Takes the session lock on moving ``agent``'s repo; False if someone holds it.

    Held by the connection: released by :func:`unlock_agent` or when the
    holder's connection ends (a crashed service releases it).
    """
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtext('hyperhive.approvals'), hashtext($1))", agent
        )
    )


async def unlock_agent(conn: asyncpg.Connection, agent: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_unlock(hashtext('hyperhive.approvals'), hashtext($1))", agent
    )


async def set_base(conn: asyncpg.Connection, approval_id: int, base_sha: str) -> None:
    await conn.execute("UPDATE approvals SET base_sha = $2 WHERE id = $1", approval_id, base_sha)


async def count_attempt(pool: asyncpg.Pool, approval_id: int, delta: int) -> int:
    """Counts a build try of an in-flight approval (-1 takes one back). Returns the count."""
    return int(
        await pool.fetchval(
            "UPDATE approvals SET attempts = attempts + $2 WHERE id = $1 RETURNING attempts",
            approval_id,
            delta,
        )
    )


async def finish(
    pool: asyncpg.Pool,
    approval_id: int,
    state: Literal["deployed", "failed"],
    *,
    tag: str,
    error: str = "",
) -> asyncpg.Record | None:
    """approved → deployed | failed, with the tag already in the repo."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE approvals SET state = $2, tag = $3, error = $4, tagged = true,"
            f" resolved_at = now() WHERE id = $1 AND state = 'approved' RETURNING {_COLUMNS}",
            approval_id,
            state,
            tag,
            error,
        )
        if row is not None:
            await outbox.add(conn, _resolved_event(row))
    return row


async def deny(
    conn: asyncpg.Connection, approval_id: int, note: str, tag: str, decided_by: str
) -> asyncpg.Record | None:
    """pending → denied (by ``decided_by``, now) inside the caller's
    transaction. None if not pending."""
    row = await conn.fetchrow(
        f"UPDATE approvals SET state = 'denied', note = $2, tag = $3, resolved_at = now(),"
        f" decided_by = $4, decided_at = now()"
        f" WHERE id = $1 AND state = 'pending' RETURNING {_COLUMNS}",
        approval_id,
        note,
        tag,
        decided_by,
    )
    if row is not None:
        await outbox.add(conn, _resolved_event(row))
    return row


def _resolved_event(row: asyncpg.Record) -> HiveEvent:
    return _event(ApprovalResolvedEvent, row)


async def mark_tagged(pool: asyncpg.Pool, approval_id: int) -> None:
    await pool.execute("UPDATE approvals SET tagged = true WHERE id = $1", approval_id)


async def mark_notified(pool: asyncpg.Pool, approval_id: int) -> None:
    await pool.execute("UPDATE approvals SET notified = true WHERE id = $1", approval_id)


async def mark_pinned(pool: asyncpg.Pool, approval_id: int) -> None:
    await pool.execute("UPDATE approvals SET pinned = true WHERE id = $1", approval_id)


async def unpinned(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Approvals whose ``proposal/<id>`` tag may be missing (a crash after the insert)."""
    return await pool.fetch(f"SELECT {_COLUMNS} FROM approvals WHERE NOT pinned ORDER BY id")


async def in_flight(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Approvals a previous run started and did not finish."""
    return await pool.fetch(
        f"SELECT {_COLUMNS} FROM approvals WHERE state = 'approved' ORDER BY id"
    )


async def unsettled(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Ended approvals whose tag or inbox report is still missing."""
    return await pool.fetch(
        f"SELECT {_COLUMNS} FROM approvals WHERE state IN ('deployed', 'failed', 'denied')"
        f" AND (NOT tagged OR NOT notified) ORDER BY id"
    )


# --- questions ----------------------------------------------------------------

_Q_COLUMNS: Final = (
    "id, asked_by, question, options, multi, answer, notified, asked_at, answered_at, answered_by"
)


def _json_list(value: str | None) -> list[str] | None:
    return None if value is None else list(json.loads(value))


def question_info(row: asyncpg.Record) -> QuestionInfo:
    """The wire form of a questions row."""
    return QuestionInfo(
        id=row["id"],
        question=row["question"],
        options=_json_list(row["options"]),
        multi=row["multi"],
        answer=_json_list(row["answer"]),
        asked_at=ts(row["asked_at"]) or 0.0,
        answered_at=ts(row["answered_at"]),
        answered_by=row["answered_by"],
    )


async def ask(
    pool: asyncpg.Pool, asked_by: str, question: str, options: list[str] | None, multi: bool
) -> asyncpg.Record:
    """Inserts a question and its ``question.asked`` event."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO questions (asked_by, question, options, multi)"
            f" VALUES ($1, $2, $3::jsonb, $4) RETURNING {_Q_COLUMNS}",
            asked_by,
            question,
            None if options is None else json.dumps(options),
            multi,
        )
        assert row is not None
        await outbox.add(
            conn,
            make_event(
                QuestionAsked(id=row["id"], question=question, options=options, multi=multi),
                agent=asked_by,
            ),
        )
    return row


async def get_question(pool: asyncpg.Pool, question_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {_Q_COLUMNS} FROM questions WHERE id = $1", question_id)


async def list_questions(pool: asyncpg.Pool, answered: bool | None) -> list[asyncpg.Record]:
    """Newest first; all when ``answered`` is None."""
    return await pool.fetch(
        f"SELECT {_Q_COLUMNS} FROM questions"
        f" WHERE $1::boolean IS NULL OR (answer IS NOT NULL) = $1 ORDER BY id DESC LIMIT 500",
        answered,
    )


async def answer(
    pool: asyncpg.Pool, question_id: int, value: list[str], answered_by: str
) -> asyncpg.Record | None:
    """Records the answer (by ``answered_by``) once; None if it was already answered."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE questions SET answer = $2::jsonb, answered_at = now(), answered_by = $3"
            f" WHERE id = $1 AND answer IS NULL RETURNING {_Q_COLUMNS}",
            question_id,
            json.dumps(value),
            answered_by,
        )
        if row is not None:
            await outbox.add(
                conn,
                make_event(
                    QuestionAnswered(
                        id=question_id,
                        question=row["question"],
                        answer=value,
                        answered_by=answered_by,
                    ),
                    agent=row["asked_by"],
                ),
            )
    return row


async def mark_question_notified(pool: asyncpg.Pool, question_id: int) -> None:
    await pool.execute("UPDATE questions SET notified = true WHERE id = $1", question_id)


async def unnotified_answers(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {_Q_COLUMNS} FROM questions WHERE answer IS NOT NULL AND NOT notified ORDER BY id"
    )


# --- notifications (the webhook's record) ---------------------------------------


async def enqueue_notifications(pool: asyncpg.Pool) -> int:
    """Records every waiting decision that has no notification yet. Returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        a = await conn.execute(
            "INSERT INTO notifications (decision, ref_id)"
            " SELECT 'approval', id FROM approvals WHERE state = 'pending'"
            " ON CONFLICT DO NOTHING"
        )
        q = await conn.execute(
            "INSERT INTO notifications (decision, ref_id)"
            " SELECT 'question', id FROM questions WHERE answer IS NULL"
            " ON CONFLICT DO NOTHING"
        )
    return int(a.split()[-1]) + int(q.split()[-1])


async def claim_notifications(
    pool: asyncpg.Pool, lease_s: float, limit: int
) -> list[asyncpg.Record]:
    """Takes due notifications for one try: each is counted as an attempt and
    hidden from other senders for ``lease_s`` (a sender that dies mid-POST
    leaves it due again after the lease)."""
    return await pool.fetch(
        "UPDATE notifications SET attempts = attempts + 1,"
        " next_at = now() + make_interval(secs => $1)"
        " WHERE id IN (SELECT id FROM notifications WHERE state = 'pending' AND next_at <= now()"
        "   ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " RETURNING id, decision, ref_id, attempts",
        lease_s,
        limit,
    )


async def end_notification(
    pool: asyncpg.Pool, notification_id: int, state: str, error: str = ""
) -> None:
    """pending → sent | skipped | gave_up."""
    await pool.execute(
        "UPDATE notifications SET state = $2, last_error = $3,"
        " sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END"
        " WHERE id = $1 AND state = 'pending'",
        notification_id,
        state,
        error[:2000],
    )


async def retry_notification(
    pool: asyncpg.Pool, notification_id: int, delay_s: float, error: str
) -> None:
    """A failed try: due again after ``delay_s``."""
    await pool.execute(
        "UPDATE notifications SET next_at = now() + make_interval(secs => $2), last_error = $3"
        " WHERE id = $1 AND state = 'pending'",
        notification_id,
        delay_s,
        error[:2000],
    )
