"""What the broker does for other parts: system events, turn statistics, turn
backfill, the agent registry, and several broker instances side by side."""

from __future__ import annotations

import asyncio
import json

import pytest

from hyperhive.broker.wake import Waiters
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import NotFound
from hyperhive.common.natsconn import sync_subscriptions
from hyperhive.common.wire.broker import (
    USAGE_KEYS,
    DeliverRequest,
    HistoryReply,
    InboxRequest,
    MessagesRequest,
    SendReply,
    StatsReply,
    StatsRequest,
    TurnEvent,
    TurnsReply,
    TurnsRequest,
    TurnStats,
    UsageDay,
    UsageReply,
    UsageRequest,
)
from hyperhive.common.wire.events import ApprovalResolved, ContainerCrash
from tests import rig
from tests.broker.conftest import Hive, ack, admin, call, recv, send, unique


async def deliver(hive: Hive, req: DeliverRequest) -> SendReply:
    return await rpc.request(
        hive.service, subjects.system("broker", "deliver"), req, SendReply, timeout=30
    )


async def test_a_system_event_arrives_as_a_typed_readable_message(hive: Hive):
    m, nm = await hive.spawn()
    crash = ContainerCrash(agent="worker1", detail="exit status 9\nsegfault", exit_code=9)
    sent = await deliver(hive, DeliverRequest(to=m, event=crash, idempotency_key="crash-1"))
    assert (await deliver(hive, DeliverRequest(to=m, event=crash, idempotency_key="crash-1"))) == (
        sent
    )
    await deliver(
        hive,
        DeliverRequest(
            to=m, event=ApprovalResolved(approval_id=7, agent="worker1", state="deployed")
        ),
    )

    got = await recv(nm, m)
    assert got.message is not None and got.message.id == sent.id
    assert got.message.sender == subjects.SYSTEM
    assert got.message.event == crash
    assert got.message.body == "container of worker1 crashed (exit code 9): exit status 9 segfault"
    await ack(nm, m, sent.id)
    second = await recv(nm, m)
    assert second.message is not None and isinstance(second.message.event, ApprovalResolved)
    assert second.message.body == "approval #7 for worker1: deployed"


async def test_history_inbox_and_cli_show_a_system_events_fields(hive: Hive):
    m, _ = await hive.spawn()
    a, na = await hive.spawn()
    crash = ContainerCrash(agent="worker2", detail="exit status 3", exit_code=3)
    sent = await deliver(hive, DeliverRequest(to=m, event=crash))
    plain = await send(na, a, m, "no event here")

    inbox = await admin(hive.operator, "inbox", InboxRequest(agent=m), HistoryReply)
    by_id = {item.id: item for item in inbox.messages}
    assert by_id[sent.id].event == crash and by_id[sent.id].state == "committed"
    assert by_id[plain.id].event is None
    history = await admin(hive.operator, "messages", MessagesRequest(agent=m), HistoryReply)
    assert [i.event for i in history.messages if i.id == sent.id] == [crash]

    operator = rig.operator_settings(hive.settings, hive.nats)
    code, out, err = await rig.hive_cli(operator, "messages", "--agent", m, "--json", timeout=30)
    assert code == 0, err
    rows = {row["id"]: row for row in json.loads(out)}
    # the same fields as before, and the event's own fields beside the text
    assert rows[sent.id]["body"] == "container of worker2 crashed (exit code 3): exit status 3"
    assert rows[sent.id]["event"] == {
        "type": "ContainerCrash",
        "agent": "worker2",
        "detail": "exit status 3",
        "exit_code": 3,
    }
    assert rows[plain.id]["event"] is None
    assert {"id", "sender", "recipient", "body", "ts", "state", "deliveries"} <= set(rows[plain.id])


async def test_turn_statistics_are_stored_as_series(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    for i in range(2):
        await send(nb, b, a, f"pending {i}")  # a's inbox depth is computed by the broker
    stats = TurnStats(
        ts=1_800_000_000.0,
        duration_ms=1234.5,
        exit_code=0,
        tool_calls={"send": 2, "Bash": 1},
        messages_sent=2,
        messages_sent_to={"peer": 1, "operator": 1},
        input_tokens=100,
        output_tokens=50,
        cost_usd=0.01,
        notes_bytes=300,
        cache_read_tokens=4000,
        cache_creation_tokens=250,
        model_calls=3,
    )
    await rpc.publish(na, subjects.agent(a, subjects.AGENT_STATS), stats)

    async def stored() -> dict[str, float] | None:
        reply = await admin(hive.operator, "stats", StatsRequest(agent=a), StatsReply)
        return {p.key: p.value for p in reply.points} or None

    values = await rig.eventually(stored, timeout=20, what="stats rows")
    assert values == {
        "duration_ms": 1234.5,
        "exit_code": 0,
        "tool_calls": 3,
        "tool.Bash": 1,
        "tool.send": 2,
        "messages_sent": 2,
        "sent_to.operator": 1,
        "sent_to.peer": 1,
        "messages_received": 1,
        "compact_retry": 0,
        "input_tokens": 100,
        "output_tokens": 50,
        "cost_usd": 0.01,
        "cache_read_tokens": 4000,
        "cache_creation_tokens": 250,
        "model_calls": 3,
        "notes_bytes": 300,
        "inbox_depth": 2,
    }
    only = await admin(hive.operator, "stats", StatsRequest(agent=a, key="duration_ms"), StatsReply)
    assert [(p.agent, p.ts, p.value) for p in only.points] == [(a, 1_800_000_000.0, 1234.5)]


async def test_usage_adds_up_turns_and_compactions_per_agent_and_utc_day(hive: Hive):
    a, na = await hive.spawn()
    day1, day2 = 1_800_000_000.0, 1_800_000_000.0 + 86400  # 2027-01-15 / 16, 08:00 UTC
    published = [
        TurnStats(ts=day1, duration_ms=1, exit_code=0, input_tokens=10, output_tokens=1,
                  cache_read_tokens=100, cache_creation_tokens=5, model_calls=2, cost_usd=0.25),
        TurnStats(ts=day1 + 60, duration_ms=1, exit_code=1, input_tokens=20, output_tokens=2,
                  model_calls=1, cost_usd=0.125),
        # a notes compaction: its usage counts, it is not a turn
        TurnStats(kind="compaction", ts=day1 + 120, duration_ms=1, exit_code=0,
                  input_tokens=300, output_tokens=30, model_calls=1, cost_usd=0.5),
        TurnStats(ts=day2, duration_ms=1, exit_code=0, input_tokens=1, model_calls=1,
                  cost_usd=0.0625),
    ]  # fmt: skip
    for stats in published:
        await rpc.publish(na, subjects.agent(a, subjects.AGENT_STATS), stats)

    async def days() -> list[UsageDay] | None:
        reply = await admin(hive.operator, "usage", UsageRequest(agent=a), UsageReply)
        return reply.days if sum(d.model_calls for d in reply.days) == 5 else None

    got = await rig.eventually(days, timeout=20, what="usage of 4 records")
    assert got == [
        UsageDay(agent=a, day="2027-01-15", turns=2, model_calls=4, input_tokens=330,
                 output_tokens=33, cache_read_tokens=100, cache_creation_tokens=5,
                 cost_usd=0.875),
        UsageDay(agent=a, day="2027-01-16", turns=1, model_calls=1, input_tokens=1,
                 cost_usd=0.0625),
    ]  # fmt: skip
    # the compaction's rows: its usage and a count, none of a turn's
    points = (await admin(hive.operator, "stats", StatsRequest(agent=a), StatsReply)).points
    compaction = {p.key for p in points if p.ts == day1 + 120}
    assert compaction == {*USAGE_KEYS, "compactions"}
    later = await admin(
        hive.operator, "usage", UsageRequest(agent=a, since=day1 + 3600), UsageReply
    )
    assert [d.day for d in later.days] == ["2027-01-16"]


async def test_an_agent_backfills_its_own_turn_events(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    js = na.jetstream()
    subject = subjects.agent(a, subjects.AGENT_EVENTS)
    await js.publish(subject, b"not a turn event")  # skipped, not an error
    seqs = []
    for i in range(12):
        ack_ = await js.publish(subject, rpc.encode(TurnEvent(type="claude", ts=float(i), turn=i)))
        seqs.append(ack_.seq)
    await nb.jetstream().publish(
        subjects.agent(b, subjects.AGENT_EVENTS), rpc.encode(TurnEvent(type="state", ts=0.0))
    )

    tail = await call(na, a, "turns", TurnsRequest(limit=5), TurnsReply)
    assert [e.turn for e in tail.events] == [7, 8, 9, 10, 11]
    assert [e.seq for e in tail.events] == seqs[7:]
    assert tail.more
    after = await call(na, a, "turns", TurnsRequest(after_seq=seqs[9]), TurnsReply)
    assert [e.turn for e in after.events] == [10, 11] and not after.more
    everything = await call(na, a, "turns", TurnsRequest(), TurnsReply)
    assert len(everything.events) == 12
    assert (await call(nb, b, "turns", TurnsRequest(), TurnsReply)).events[0].type == "state"
    fresh, nf = await hive.spawn()
    assert (await call(nf, fresh, "turns", TurnsRequest(), TurnsReply)).events == []


async def test_recipients_follow_the_agent_registry(hive: Hive):
    a, na = await hive.spawn()
    with pytest.raises(NotFound, match="unknown recipient"):
        await send(na, a, unique("nobody"), "hello?")
    b, _nb = await hive.spawn()
    await send(na, a, b, "you exist")
    await hive.destroy(b)

    async def refused() -> bool:
        try:
            await send(na, a, b, "still there?")
        except NotFound:
            return True
        return False

    await rig.eventually(refused, timeout=20, what="send to a destroyed agent refused")


async def test_broker_instances_wake_each_others_waiting_recvs(hive: Hive, nats_server):
    """A recv waiting in one instance returns when another instance commits."""
    first = await rig.connect_as(nats_server, nats_server.service_seed)
    second = await rig.connect_as(nats_server, nats_server.service_seed)
    here, there = Waiters(first), Waiters(second)
    await there.start()
    await sync_subscriptions(second)
    await here.start()
    try:
        # here's start-up wake reaches there before this one (same connection)
        with there.watch("sync") as synced:
            await here.committed(["sync"])
            await synced.wait(timeout=10)
            assert synced.is_set()
        with there.watch("b1") as woke, there.watch("b2") as other:
            await here.committed(["b1"])
            await woke.wait(timeout=10)
            assert woke.is_set()
            assert not other.is_set()
            # an instance that (re)starts has everyone look again: it may have
            # died between a commit and its wake-up
            restarted = Waiters(first)
            await restarted.start()
            await sync_subscriptions(first)
            await other.wait(timeout=10)
            assert other.is_set()
            await restarted.stop()
    finally:
        await here.stop()
        await there.stop()
        await first.close()
        await second.close()


async def test_two_broker_instances_serve_the_same_inboxes(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    async with rig.running_service("broker", hive.settings) as second:
        waiting = [asyncio.create_task(recv(nb, b, wait_ms=60_000)) for _ in range(6)]
        # all six wait, spread over both instances, before anything is sent
        await rig.eventually(lambda: hive.handling(6, second), what="six recvs waiting")
        sent = {(await send(na, a, b, f"m{i}")).id for i in range(6)}
        async with asyncio.timeout(30):
            replies = await asyncio.gather(*waiting)
    assert {r.message.id for r in replies if r.message} == sent
