"""The broker's request handlers: send, recv, ack, receipts, history, stats.

Identity comes from the subject (``call.agent``). A send is committed to
Postgres, with its ``message.sent`` event in the same transaction (outbox),
before it is answered; concurrent sends share a transaction (group commit).
Concurrent hand-outs share a statement too, and so do concurrent acks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Sequence

import asyncpg
import msgspec

from hyperhive.broker import store
from hyperhive.broker.batching import GroupCommit
from hyperhive.broker.known import KnownAgents
from hyperhive.broker.render import render_event
from hyperhive.broker.store import Ack, Claim, Claimed, NewMessage, Stored, db_errors
from hyperhive.broker.wake import Waiters
from hyperhive.common import outbox, subjects
from hyperhive.common.config import BrokerSettings
from hyperhive.common.errors import BadRequest, Forbidden, HiveError, NotFound
from hyperhive.common.names import check_agent_name, is_agent_name
from hyperhive.common.outbox import OutboxRelay
from hyperhive.common.rpc import Call
from hyperhive.common.telemetry import current_traceparent
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import (
    RECIPIENT_KINDS,
    USAGE_KEYS,
    AckRequest,
    AdminSendRequest,
    DeliverRequest,
    HistoryItem,
    HistoryReply,
    InboxRequest,
    Message,
    MessagesRequest,
    MessageStatus,
    PruneReply,
    PruneRequest,
    RecvReply,
    RecvRequest,
    SendReply,
    SendRequest,
    StatPoint,
    StatsReply,
    StatsRequest,
    StatusRequest,
    TurnStats,
    UsageDay,
    UsageReply,
    UsageRequest,
)
from hyperhive.common.wire.events import MessagesPruned, SystemEvent, TurnStatsRecorded

log = logging.getLogger(__name__)

EVENT_BODY_CHARS = 2000  # bodies in HIVE_EVENTS records are cut to this
MAX_KEY_CHARS = 200
RELAY_DELAY_S = 0.005  # how long events may wait to be published with the next ones
PRUNE_BATCH = 10_000  # messages deleted per transaction by retention
_event_enc = msgspec.json.Encoder()
_event_dec = msgspec.json.Decoder(SystemEvent)


class Broker:
    """Holds what the handlers share: the pool, settings, known agents, waiters."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        relaxed: asyncpg.Pool,
        relay: OutboxRelay,
        settings: BrokerSettings,
        known: KnownAgents,
        waiters: Waiters,
        stopping: asyncio.Event,
    ) -> None:
        self.pool = pool  # sends: committed durably before the reply
        self.relaxed = relaxed  # hand-outs, acks, stats (see store.open_relaxed_pool)
        self.relay = relay
        self.settings = settings
        self.known = known
        self.waiters = waiters
        self.stopping = stopping
        self._kick_pending = False
        self.kinds = store.EventKinds(
            sent=_kind(subjects.EV_MESSAGE_SENT),
            delivered=_kind(subjects.EV_MESSAGE_DELIVERED),
            redelivered=_kind(subjects.EV_MESSAGE_REDELIVERED),
            acked=_kind(subjects.EV_MESSAGE_ACKED),
            body_chars=EVENT_BODY_CHARS,
        )
        self.sends: GroupCommit[NewMessage, Stored] = GroupCommit(
            self._commit_sends, max_batch=256, workers=2
        )
        self.claims: GroupCommit[Claim, Claimed] = GroupCommit(
            self._claim_batch, max_batch=256, workers=2
        )
        self.acks: GroupCommit[Ack, bool] = GroupCommit(self._ack_batch, max_batch=256, workers=2)

    def start(self) -> None:
        """Starts the batching of sends, hand-outs and acks (inside the event loop)."""
        for batcher in (self.sends, self.claims, self.acks):
            batcher.start()

    async def stop(self) -> None:
        """Stops the batching; requests still queued fail with ``Internal``."""
        for batcher in (self.sends, self.claims, self.acks):
            await batcher.stop()

    def _kick_relay(self) -> None:
        """Has the outbox relay publish soon, once for everything committed meanwhile.

        Deferred by a moment so that the replies waiting on a commit go out
        before the relay takes the event loop, and so that a busy broker
        publishes events in batches.
        """
        if self._kick_pending:
            return
        self._kick_pending = True
        asyncio.get_running_loop().call_later(RELAY_DELAY_S, self._kick_now)

    def _kick_now(self) -> None:
        self._kick_pending = False
        self.relay.kick()

    # --- send ---------------------------------------------------------------

    def _check_body(self, body: str) -> None:
        if not body or not body.strip():
            raise BadRequest("message body is empty")
        try:
            size = len(body.encode("utf-8"))
        except UnicodeEncodeError:
            raise BadRequest("message body is not valid UTF-8 text") from None
        if size > self.settings.max_body_bytes:
            raise BadRequest(
                f"message body is {size} bytes; the limit is {self.settings.max_body_bytes}"
            )
        if "\x00" in body:
            raise BadRequest("message body contains a NUL character")

    @staticmethod
    def _check_key(key: str | None) -> None:
        if key is not None and not (0 < len(key) <= MAX_KEY_CHARS and "\x00" not in key):
            raise BadRequest(f"idempotency_key must be 1-{MAX_KEY_CHARS} characters")

    async def _check_recipient(self, to: str) -> None:
        if to == subjects.OPERATOR:
            return
        if not is_agent_name(to) or to == subjects.SYSTEM:
            raise BadRequest(f"invalid recipient {to!r}: an agent name or 'operator'")
        await self.known.check(to)

    async def _store(self, message: NewMessage) -> SendReply:
        stored = await self.sends.submit(message)
        return SendReply(id=stored.id, ts=stored.ts)

    async def _commit_sends(self, items: Sequence[NewMessage]) -> list[Stored]:
        # a recv waiting here for a recipient gets its message from this very
        # statement: no claim of its own after the wake (see store._INSERT)
        reserved = [self.waiters.reserve(m.recipient) for m in items]
        items = [
            m if w is None else dataclasses.replace(m, hand_to=w.traceparent or "")
            for m, w in zip(items, reserved, strict=True)
        ]
        try:
            # a bad value in a batch of several: retried one by one (see GroupCommit)
            with db_errors("send", bad_values=len(items) == 1):
                stored = await store.insert_messages(
                    self.pool, items, self.kinds, self.settings.visibility_timeout_s
                )
        except BaseException:
            for w in reserved:
                if w is not None:
                    w.hand(None)  # it looks in the table again
            raise
        new: list[str] = []
        for m, s, w in zip(items, stored, reserved, strict=True):
            if w is not None:
                w.hand(s.handed)
            if s.created and s.handed is None:
                new.append(m.recipient)
        if any(s.created for s in stored):
            self._kick_relay()
        if new:
            await self.waiters.committed(new)
        return stored

    async def send(self, req: SendRequest, call: Call) -> SendReply:
        """``hive.agent.<n>.send``: commit a message from the calling agent."""
        self._check_body(req.body)
        self._check_key(req.idempotency_key)
        await self._check_recipient(req.to)
        return await self._store(
            NewMessage(
                sender=call.agent,
                recipient=req.to,
                body=req.body,
                idempotency_key=req.idempotency_key,
                traceparent=current_traceparent(),
            )
        )

    async def admin_send(self, req: AdminSendRequest, _call: Call) -> SendReply:
        """``hive.admin.broker.send``: a message from the operator."""
        self._check_body(req.body)
        self._check_key(req.idempotency_key)
        if req.to == subjects.OPERATOR:
            raise BadRequest("the operator cannot send a message to itself")
        await self._check_recipient(req.to)
        return await self._store(
            NewMessage(
                sender=subjects.OPERATOR,
                recipient=req.to,
                body=req.body,
                idempotency_key=req.idempotency_key,
                traceparent=current_traceparent(),
            )
        )

    async def deliver(self, req: DeliverRequest, _call: Call) -> SendReply:
        """``hive.system.broker.deliver``: a system event into an inbox, now.

        The services hand their events to ``HIVE_DELIVERIES`` instead
        (:mod:`hyperhive.common.delivery`), which ends in :meth:`deliver_event`.
        """
        return await self.deliver_event(req)

    async def deliver_event(self, req: DeliverRequest) -> SendReply:
        """A system event into an inbox, stored once per idempotency key."""
        self._check_key(req.idempotency_key)
        await self._check_recipient(req.to)
        body = render_event(req.event)
        self._check_body(body)
        return await self._store(
            NewMessage(
                sender=subjects.SYSTEM,
                recipient=req.to,
                body=body,
                event=_event_enc.encode(req.event).decode(),
                idempotency_key=req.idempotency_key,
                traceparent=current_traceparent(),
            )
        )

    # --- recv / ack ---------------------------------------------------------

    async def recv(self, req: RecvRequest, call: Call) -> RecvReply:
        """``hive.agent.<n>.recv``: the oldest available message, waiting up to ``wait_ms``.

        Woken by a commit for this agent (in this or another broker instance)
        or by the expiry of one of its leases; never by polling the table.
        With ``ack``, that message is acked first (as :meth:`ack` would; an
        ack refused fails the recv, which then hands out nothing).
        """
        agent = call.agent
        if req.wait_ms < 0:
            raise BadRequest("wait_ms must be >= 0")
        if req.ack is not None:
            await self._ack(req.ack, agent)
        wait_s = min(req.wait_ms, self.settings.max_wait_ms) / 1000
        deadline = time.monotonic() + wait_s
        traceparent = current_traceparent()
        with self.waiters.watch(agent, traceparent) as woke:
            while True:
                woke.clear()
                claimed = await self.claims.submit(Claim(agent, traceparent))
                if claimed.row is not None:
                    return RecvReply(message=_message(claimed.row))
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stopping.is_set():
                    return RecvReply(empty=True)
                expiry = claimed.next_expiry
                timeout = remaining if expiry is None else min(remaining, max(expiry, 0.0) + 0.01)
                handed = await woke.wait(timeout)
                if handed is not None:
                    return RecvReply(message=_message(handed))

    async def _claim_batch(self, claims: Sequence[Claim]) -> list[Claimed]:
        with db_errors("recv", bad_values=len(claims) == 1):
            claimed = await store.claim_batch(
                self.relaxed, claims, self.settings.visibility_timeout_s, self.kinds
            )
        if any(c.row is not None for c in claimed):
            self._kick_relay()
        return claimed

    async def ack(self, req: AckRequest, call: Call) -> Ok:
        """``hive.agent.<n>.ack``: the calling agent consumed message ``id``.

        Acking an already acked message of one's own is a no-op.
        """
        await self._ack(req.id, call.agent)
        return Ok()

    async def _ack(self, message_id: int, agent: str) -> None:
        if await self.acks.submit(Ack(message_id, agent, current_traceparent())):
            return
        with db_errors("ack"):
            existing = await store.get(self.pool, message_id)
        if existing is None:
            raise NotFound(f"no message with id {message_id}")
        if existing["recipient"] != agent:
            raise Forbidden(f"message {message_id} is not addressed to {agent}")
        # already acked

    async def _ack_batch(self, acks: Sequence[Ack]) -> list[bool]:
        with db_errors("ack", bad_values=len(acks) == 1):
            acked = await store.ack_many(self.relaxed, acks, self.kinds)
        if any(acked):
            self._kick_relay()
        return acked

    # --- receipts and history -------------------------------------------------

    async def _status_row(self, message_id: int) -> asyncpg.Record:
        with db_errors("status"):
            row = await store.get(self.pool, message_id)
        if row is None:
            raise NotFound(f"no message with id {message_id}")
        return row

    async def status(self, req: StatusRequest, call: Call) -> MessageStatus:
        """``hive.agent.<n>.status``: a receipt, for the message's sender or recipient."""
        row = await self._status_row(req.id)
        if call.agent not in (row["sender"], row["recipient"]):
            raise Forbidden(f"message {req.id} was neither sent nor received by {call.agent}")
        return _status(row)

    async def admin_status(self, req: StatusRequest, _call: Call) -> MessageStatus:
        return _status(await self._status_row(req.id))

    def _limit(self, limit: int) -> int:
        if limit <= 0:
            raise BadRequest("limit must be > 0")
        return min(limit, self.settings.history_limit)

    async def messages(self, req: MessagesRequest, _call: Call) -> HistoryReply:
        """``hive.admin.broker.messages``: history, filtered by agent and time."""
        if req.agent is not None and req.agent not in (subjects.OPERATOR, subjects.SYSTEM):
            check_agent_name(req.agent, allow_manager=True)
        with db_errors("history"):
            rows = await store.history(
                self.pool, agent=req.agent, since=req.since, limit=self._limit(req.limit)
            )
        return HistoryReply(messages=[_history_item(r) for r in rows])

    async def inbox(self, req: InboxRequest, _call: Call) -> HistoryReply:
        """``hive.admin.broker.inbox``: the messages an agent has not acked."""
        if req.agent != subjects.OPERATOR:
            check_agent_name(req.agent, allow_manager=True)
        with db_errors("inbox"):
            rows = await store.pending(self.pool, req.agent, self.settings.history_limit)
        return HistoryReply(messages=[_history_item(r) for r in rows])

    # --- retention ----------------------------------------------------------------

    async def prune(self, before: float, by: str) -> int:
        """Deletes the acked messages created before ``before``, in batches.

        Each batch commits with its ``messages.pruned`` event (outbox), so
        the audit trail holds every deletion. Returns how many were deleted.
        """
        total = 0
        while True:
            with db_errors("prune"):
                async with self.pool.acquire() as conn, conn.transaction():
                    n = await store.prune_batch(conn, before, PRUNE_BATCH)
                    if n:
                        await outbox.add(
                            conn,
                            outbox.make_event(MessagesPruned(before=before, deleted=n, by=by)),
                        )
            if n:
                self._kick_relay()
            total += n
            if n < PRUNE_BATCH:
                return total

    async def admin_prune(self, req: PruneRequest, _call: Call) -> PruneReply:
        """``hive.admin.broker.prune``: the operator deletes old history."""
        if req.before > time.time() + 60:
            raise BadRequest("prune before a time in the future: nothing pending is kept apart")
        deleted = await self.prune(req.before, "operator")
        log.info("history pruned", extra={"before": req.before, "deleted": deleted})
        return PruneReply(deleted=deleted, before=req.before)

    async def retain_forever(self) -> None:
        """Applies ``retention_days`` every ``retention_interval_s`` (0 days: never)."""
        days = self.settings.retention_days
        if days <= 0:
            return
        while True:
            try:
                deleted = await self.prune(time.time() - days * 86400, "retention")
                if deleted:
                    log.info("history retention", extra={"days": days, "deleted": deleted})
            except HiveError as exc:  # the database is down: the next round retries
                log.warning("history retention not applied: %s", exc)
            await asyncio.sleep(self.settings.retention_interval_s)

    # --- turn statistics --------------------------------------------------------

    async def ingest_stats(self, stats: TurnStats, call: Call) -> None:
        """``hive.agent.<n>.stats`` (published): store one turn's figures as rows."""
        agent = call.agent
        try:
            values = stats_rows(stats)
        except BadRequest as exc:
            log.warning("turn stats of %s refused: %s", agent, exc)
            raise
        with db_errors("stats"):
            async with self.relaxed.acquire() as conn, conn.transaction():
                if stats.inbox_depth is None and stats.kind == "turn":
                    values.append(("inbox_depth", float(await store.inbox_depth(conn, agent))))
                await store.insert_stats(conn, agent, stats.ts, values)
                await outbox.add(
                    conn,
                    outbox.make_event(
                        TurnStatsRecorded(ts=stats.ts, values=dict(values)), agent=agent
                    ),
                )
        self._kick_relay()

    async def stats(self, req: StatsRequest, _call: Call) -> StatsReply:
        """``hive.admin.broker.stats``: stored turn statistics, oldest first."""
        if req.agent is not None:
            check_agent_name(req.agent, allow_manager=True)
        if req.limit <= 0:
            raise BadRequest("limit must be > 0")
        with db_errors("stats"):
            rows = await store.query_stats(
                self.pool,
                agent=req.agent,
                since=req.since,
                key=req.key,
                limit=min(req.limit, 50_000),
            )
        return StatsReply(
            points=[
                StatPoint(agent=r["agent"], ts=r["ts"], key=r["key"], value=r["value"])
                for r in rows
            ]
        )

    async def usage(self, req: UsageRequest, _call: Call) -> UsageReply:
        """``hive.admin.broker.usage``: turns, model calls, tokens and cost per
        agent and UTC day (compactions' usage included)."""
        if req.agent is not None:
            check_agent_name(req.agent, allow_manager=True)
        with db_errors("usage"):
            rows = await store.usage_per_day(self.pool, agent=req.agent, since=req.since)
        return UsageReply(
            days=[
                UsageDay(
                    agent=r["agent"],
                    day=r["day"],
                    turns=int(r["turns"]),
                    **{k: int(r[k]) for k in USAGE_KEYS if k != "cost_usd"},
                    cost_usd=round(float(r["cost_usd"]), 6),
                )
                for r in rows
            ]
        )


def stats_rows(stats: TurnStats) -> list[tuple[str, float]]:
    """The ``(key, value)`` rows of one turn (``tool.<name>`` per tool,
    ``sent_to.<kind>`` per recipient kind)."""
    if not 0 < stats.ts < 1e11:
        raise BadRequest(f"turn stats ts {stats.ts!r} is not a unix time")
    if not all(n and len(n) <= 200 for n in stats.tool_calls):
        raise BadRequest("tool_calls keys must be tool names")
    if not set(stats.messages_sent_to) <= RECIPIENT_KINDS:
        raise BadRequest(f"messages_sent_to keys must be among {sorted(RECIPIENT_KINDS)}")
    usage: list[tuple[str, float]] = [(k, float(getattr(stats, k))) for k in USAGE_KEYS]
    if any(v < 0 for _, v in usage):
        raise BadRequest(f"turn stats {', '.join(USAGE_KEYS)} must be >= 0")
    if stats.kind == "compaction":  # not a turn: what it cost, and that it ran
        values = [*usage, ("compactions", 1.0)]
        if not all(math.isfinite(v) for _, v in values):
            raise BadRequest("turn stats hold a value that is not a finite number")
        return values
    values: list[tuple[str, float]] = [
        ("duration_ms", float(stats.duration_ms)),
        ("exit_code", float(stats.exit_code)),
        ("tool_calls", float(sum(stats.tool_calls.values()))),
        *((f"tool.{name}", float(n)) for name, n in sorted(stats.tool_calls.items())),
        ("messages_sent", float(stats.messages_sent)),
        *((f"sent_to.{kind}", float(n)) for kind, n in sorted(stats.messages_sent_to.items())),
        ("messages_received", float(stats.messages_received)),
        ("compact_retry", 1.0 if stats.compact_retry else 0.0),
        *usage,
    ]
    if stats.inbox_depth is not None:
        values.append(("inbox_depth", float(stats.inbox_depth)))
    if stats.notes_bytes is not None:
        values.append(("notes_bytes", float(stats.notes_bytes)))
    if not all(math.isfinite(v) for _, v in values):
        raise BadRequest("turn stats hold a value that is not a finite number")
    return values


def _message(row: asyncpg.Record) -> Message:
    return Message(
        id=row["id"],
        sender=row["sender"],
        recipient=row["recipient"],
        body=row["body"],
        ts=row["created_at"],
        redelivered=row["deliveries"] > 1,
        deliveries=row["deliveries"],
        event=_decode_event(row["event"]),
        traceparent=row["traceparent"],
    )


def _decode_event(data: str | None) -> SystemEvent | None:
    if data is None:
        return None
    try:
        return _event_dec.decode(data)
    except msgspec.DecodeError:
        log.warning("stored system event does not decode; sent without it")
        return None


def _kind(kind: str) -> tuple[str, str]:
    return subjects.event(kind), kind


def _status(row: asyncpg.Record) -> MessageStatus:
    return MessageStatus(
        id=row["id"],
        sender=row["sender"],
        recipient=row["recipient"],
        state=store.message_state(row),
        deliveries=row["deliveries"],
        redeliveries=max(0, row["deliveries"] - 1),
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
        acked_at=row["acked_at"],
    )


def _history_item(row: asyncpg.Record) -> HistoryItem:
    return HistoryItem(
        id=row["id"],
        sender=row["sender"],
        recipient=row["recipient"],
        body=row["body"],
        ts=row["created_at"],
        state=store.message_state(row),
        deliveries=row["deliveries"],
        delivered_at=row["delivered_at"],
        acked_at=row["acked_at"],
        event=_decode_event(row["event"]),
    )
