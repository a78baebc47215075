"""Messaging as agents use it: send, recv, ack, receipts, events, idempotency."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from hyperhive.common import subjects
from hyperhive.common.errors import Forbidden, NotFound
from hyperhive.common.wire.broker import (
    AdminSendRequest,
    HistoryReply,
    InboxRequest,
    MessagesRequest,
    MessageStatus,
    RecvReply,
    RecvRequest,
    SendReply,
    StatusRequest,
)
from tests import rig
from tests.broker.conftest import Hive, ack, admin, broker_settings, call, recv, send, unique

EV = subjects


async def test_a_message_goes_from_sender_to_recipient_once_acked(hive: Hive, events):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    sent = await send(na, a, b, "hello b")
    await events.wait_for(sent.id, [EV.EV_MESSAGE_SENT])

    got = await recv(nb, b, wait_ms=5000)
    assert got.message is not None
    assert (got.message.id, got.message.sender, got.message.recipient) == (sent.id, a, b)
    assert got.message.body == "hello b"
    assert got.message.ts == pytest.approx(sent.ts)
    assert not got.message.redelivered and got.message.deliveries == 1
    assert (await call(na, a, "status", StatusRequest(id=sent.id), MessageStatus)).state == (
        "handed_out"
    )

    await ack(nb, b, sent.id)
    receipt = await call(na, a, "status", StatusRequest(id=sent.id), MessageStatus)
    assert receipt.state == "acked" and receipt.deliveries == 1 and receipt.redeliveries == 0
    assert receipt.created_at <= (receipt.delivered_at or 0) <= (receipt.acked_at or 0)
    # the recipient may read the receipt too; acking again changes nothing
    await ack(nb, b, sent.id)
    assert (await call(nb, b, "status", StatusRequest(id=sent.id), MessageStatus)) == receipt

    await events.wait_for(
        sent.id, [EV.EV_MESSAGE_SENT, EV.EV_MESSAGE_DELIVERED, EV.EV_MESSAGE_ACKED]
    )
    record = next(e for e in events.events if e.data.get("id") == sent.id)
    assert record.agent == b
    assert record.data["sender"] == a and record.data["body"] == "hello b"
    assert (await recv(nb, b)).empty


async def test_messages_come_out_oldest_first(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    ids = [(await send(na, a, b, f"m{i}")).id for i in range(5)]
    got = []
    for _ in ids:
        reply = await recv(nb, b)
        assert reply.message is not None
        got.append(reply.message.id)
        await ack(nb, b, reply.message.id)
    assert got == ids


async def test_same_idempotency_key_returns_the_first_id_and_stores_nothing(hive: Hive, events):
    a, na = await hive.spawn()
    b, _nb = await hive.spawn()
    first = await send(na, a, b, "once", key="k-1")
    again = await send(na, a, b, "once (retry)", key="k-1")
    together = await asyncio.gather(*(send(na, a, b, "burst", key="k-2") for _ in range(8)))
    assert again == first
    assert len({r.id for r in together}) == 1
    # another sender may use the same key for its own message
    c, nc = await hive.spawn()
    other = await send(nc, c, b, "other sender", key="k-1")
    assert other.id != first.id

    inbox = await admin(hive.operator, "inbox", InboxRequest(agent=b), HistoryReply)
    assert [m.body for m in inbox.messages] == ["once", "burst", "other sender"]
    await events.wait_for(other.id, [EV.EV_MESSAGE_SENT])
    assert events.of(first.id) == [EV.EV_MESSAGE_SENT]


async def test_a_waiting_recv_returns_when_a_message_arrives(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    # a long wait: if nothing woke the recv, it would outlast the test's timeout
    waiting = asyncio.create_task(recv(nb, b, wait_ms=60_000))
    # the recv is in the broker's hands (waiting) before anything is sent
    await rig.eventually(lambda: hive.handling(1), what="the recv waits in the broker")
    assert not waiting.done()
    sent = await send(na, a, b, "wake up")
    async with asyncio.timeout(20):
        got = await waiting
    assert got.message is not None and got.message.id == sent.id


async def test_a_send_hands_its_message_to_the_waiting_recv(hive: Hive, events):
    """The recv waiting in the broker gets the message from the send's own
    statement: delivered once, its events in order, then acked as any other."""
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    waiting = [asyncio.create_task(recv(nb, b, wait_ms=60_000)) for _ in range(2)]
    await asyncio.sleep(0.3)  # let them reach the broker and wait (not a timing assertion)
    first, second = await asyncio.gather(send(na, a, b, "one"), send(na, a, b, "two"))
    async with asyncio.timeout(20):
        got = await asyncio.gather(*waiting)
    # each waiting recv got one of the two, once
    assert sorted(g.message.id for g in got if g.message) == sorted([first.id, second.id])
    for g in got:
        assert g.message is not None and g.message.deliveries == 1
        assert not g.message.redelivered and g.message.sender == a
        assert g.message.body == ("one" if g.message.id == first.id else "two")
        status = await call(na, a, "status", StatusRequest(id=g.message.id), MessageStatus)
        assert status.state == "handed_out" and status.deliveries == 1
        assert status.created_at <= (status.delivered_at or 0)
    assert (await recv(nb, b)).empty  # handed out, not available again
    for g in got:
        assert g.message is not None
        await ack(nb, b, g.message.id)
        await events.wait_for(
            g.message.id, [EV.EV_MESSAGE_SENT, EV.EV_MESSAGE_DELIVERED, EV.EV_MESSAGE_ACKED]
        )
    delivered = [e for e in events.events if e.kind == EV.EV_MESSAGE_DELIVERED]
    assert {e.data["id"] for e in delivered} >= {first.id, second.id}
    assert all(e.data["deliveries"] == 1 for e in delivered if e.data["id"] == first.id)
    sent_records = [e for e in events.events if e.kind == EV.EV_MESSAGE_SENT]
    assert all(e.data["deliveries"] == 0 for e in sent_records if e.data["id"] == first.id)


async def test_recv_with_nothing_pending_returns_empty(hive: Hive):
    b, nb = await hive.spawn()
    assert (await recv(nb, b, wait_ms=0)).empty
    reply = await recv(nb, b, wait_ms=300)
    assert reply.empty and reply.message is None


async def test_a_recv_waits_no_longer_than_the_cap(database_url: str, tmp_path: Path):
    cap_ms = 400
    with rig.nats_server() as nats:  # its own: no other broker may answer
        settings = broker_settings(
            nats, database_url, tmp_path / "home", HIVE_BROKER_MAX_WAIT_MS=str(cap_ms)
        )
        name = unique("w")
        seed = rig.add_agent_user(nats, name)
        nc = await rig.connect_as(nats, seed, subjects.inbox_prefix(name))
        try:
            async with rig.running_service("broker", settings):
                t0 = time.monotonic()
                reply = await recv(nc, name, wait_ms=60_000)
                waited = time.monotonic() - t0
        finally:
            await nc.close()
    assert reply.empty and reply.message is None
    # about the cap, nowhere near the 60 s asked for
    assert cap_ms / 1000 * 0.9 <= waited < 10, waited


async def test_concurrent_recvs_never_get_the_same_message(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    ids = {(await send(na, a, b, f"m{i}")).id for i in range(10)}
    replies = await asyncio.gather(*(recv(nb, b, wait_ms=1500) for _ in range(16)))
    got = [r.message.id for r in replies if r.message is not None]
    assert sorted(got) == sorted(ids)
    assert sum(r.empty for r in replies) == 6


async def test_an_unacked_message_is_handed_out_again_after_the_visibility_timeout(
    hive: Hive, events
):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    sent = await send(na, a, b, "ack me")
    first = await recv(nb, b)
    assert first.message is not None and first.message.id == sent.id
    # not acked: hidden while its lease (2 s here) runs, then handed out again;
    # the waiting recv is woken by the lease expiry, not by a new message
    assert (await recv(nb, b)).empty
    again = await recv(nb, b, wait_ms=20_000)
    assert again.message is not None and again.message.id == sent.id
    assert again.message.redelivered and again.message.deliveries == 2
    receipt = await call(na, a, "status", StatusRequest(id=sent.id), MessageStatus)
    assert receipt.state == "handed_out" and receipt.redeliveries == 1
    await ack(nb, b, sent.id)
    await events.wait_for(
        sent.id,
        [
            EV.EV_MESSAGE_SENT,
            EV.EV_MESSAGE_DELIVERED,
            EV.EV_MESSAGE_REDELIVERED,
            EV.EV_MESSAGE_ACKED,
        ],
    )


async def test_the_operator_sends_and_receives(hive: Hive):
    a, na = await hive.spawn()
    sent = await admin(hive.operator, "send", AdminSendRequest(to=a, body="from you"), SendReply)
    got = await recv(na, a)
    assert got.message is not None and got.message.sender == subjects.OPERATOR
    await ack(na, a, got.message.id)

    reply = await send(na, a, subjects.OPERATOR, "to the operator")
    inbox = await admin(hive.operator, "inbox", InboxRequest(agent="operator"), HistoryReply)
    assert reply.id in [m.id for m in inbox.messages]
    status = await admin(hive.operator, "status", StatusRequest(id=sent.id), MessageStatus)
    assert status.state == "acked" and status.recipient == a


async def test_receipts_are_only_for_the_sender_and_the_recipient(hive: Hive):
    a, na = await hive.spawn()
    b, _nb = await hive.spawn()
    c, nc = await hive.spawn()
    sent = await send(na, a, b, "private")
    with pytest.raises(Forbidden):
        await call(nc, c, "status", StatusRequest(id=sent.id), MessageStatus)
    with pytest.raises(NotFound):
        await call(na, a, "status", StatusRequest(id=sent.id + 10_000_000), MessageStatus)


async def test_history_filters_by_agent_and_time(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    first = await send(na, a, b, "one")
    second = await send(nb, b, a, "two")
    third = await send(na, a, b, "three")

    of_a = await admin(hive.operator, "messages", MessagesRequest(agent=a), HistoryReply)
    assert [m.id for m in of_a.messages] == [first.id, second.id, third.id]
    latest = await admin(hive.operator, "messages", MessagesRequest(agent=a, limit=2), HistoryReply)
    assert [m.id for m in latest.messages] == [second.id, third.id]
    since = await admin(
        hive.operator, "messages", MessagesRequest(agent=a, since=first.ts), HistoryReply
    )
    assert [m.id for m in since.messages] == [second.id, third.id]
    assert [m.state for m in of_a.messages] == ["committed"] * 3


async def test_a_recv_acks_the_message_before_it(hive: Hive, events):
    """``RecvRequest.ack``: one request per message for a loop of recv and ack."""
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    first = await send(na, a, b, "one")
    second = await send(na, a, b, "two")
    got = await recv(nb, b)
    assert got.message is not None and got.message.id == first.id
    got = await call(nb, b, "recv", RecvRequest(ack=first.id), RecvReply)
    assert got.message is not None and got.message.id == second.id
    receipt = await call(na, a, "status", StatusRequest(id=first.id), MessageStatus)
    assert receipt.state == "acked"
    await events.wait_for(
        first.id, [EV.EV_MESSAGE_SENT, EV.EV_MESSAGE_DELIVERED, EV.EV_MESSAGE_ACKED]
    )
    # acking an acked message of one's own again is a no-op, and the recv goes on
    got = await call(nb, b, "recv", RecvRequest(ack=first.id), RecvReply)
    assert got.empty
    # someone else's message: refused, and nothing is handed out
    third = await send(na, a, b, "three")
    c, nc = await hive.spawn()
    with pytest.raises(Forbidden):
        await call(nc, c, "recv", RecvRequest(ack=third.id), RecvReply)
    with pytest.raises(NotFound):
        await call(nb, b, "recv", RecvRequest(ack=2**62), RecvReply)
    assert (await call(na, a, "status", StatusRequest(id=third.id), MessageStatus)).state == (
        "committed"
    )
    got = await call(nb, b, "recv", RecvRequest(ack=second.id), RecvReply)
    assert got.message is not None and got.message.id == third.id


async def test_retention_deletes_acked_history_older_than_the_setting(hive: Hive):
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    acked = await send(na, a, b, "acked, then forgotten")
    pending = await send(na, a, b, "pending, kept")
    got = await recv(nb, b)
    assert got.message is not None and got.message.id == acked.id
    await ack(nb, b, acked.id)
    await asyncio.sleep(1.0)
    # a second instance whose retention is one second, applied every 0.1 s
    keep_1s = msgspec.structs.replace(
        hive.settings.broker, retention_days=1 / 86400, retention_interval_s=0.1
    )
    settings = msgspec.structs.replace(hive.settings, broker=keep_1s)
    async with rig.running_service("broker", settings):

        async def forgotten() -> bool:
            try:
                await admin(hive.operator, "status", StatusRequest(id=acked.id), MessageStatus)
            except NotFound:
                return True
            return False

        await rig.eventually(forgotten, timeout=30, what="acked message pruned")
    status = await admin(hive.operator, "status", StatusRequest(id=pending.id), MessageStatus)
    assert status.state == "committed"
