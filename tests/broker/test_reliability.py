"""Reliability against real servers: a killed broker, a restarted NATS, a stopped
Postgres, an unreachable registry. Every acknowledged send is delivered.

Each test runs its own NATS server (the session one is shared with the other
broker tests, whose broker would answer these tests' requests too).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from hyperhive.cli.embedded import EmbeddedPostgres
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import HiveError, Unavailable
from hyperhive.common.wire.base import Ok, Ping, Pong
from hyperhive.common.wire.broker import (
    AckRequest,
    HistoryReply,
    MessagesRequest,
    RecvReply,
    RecvRequest,
    SendReply,
    SendRequest,
)
from hyperhive.common.wire.events import HiveEvent
from tests import rig
from tests.broker.conftest import Hive, broker_settings, hive_of, recv, send, unique

pytestmark = pytest.mark.slow

CALL_TIMEOUT = 3.0  # short: a request lost in a crash is retried soon


@dataclass
class Traffic:
    """Senders that retry each send (same idempotency key) until it is
    acknowledged, and receivers that recv and ack until they got them all."""

    per_sender: int
    acked: dict[str, int] = field(default_factory=dict)  # body -> id
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    sender_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    sender_error_messages: list[str] = field(default_factory=list)
    senders_done: asyncio.Event = field(default_factory=asyncio.Event)
    acked_when_disrupted: tuple[int, int] = (0, 0)  # acked sends before / after it
    log: list[str] = field(default_factory=list)  # what happened when, for a failure

    async def sender(self, nc: NATS, name: str, to: str, lane: int) -> None:
        subject = subjects.agent(name, subjects.AGENT_SEND)
        for i in range(self.per_sender):
            body = f"{name}-{lane}-{i}"
            while True:
                try:
                    reply = await rpc.request(
                        nc,
                        subject,
                        SendRequest(to=to, body=body, idempotency_key=body),
                        SendReply,
                        timeout=CALL_TIMEOUT,
                    )
                except HiveError as exc:  # a clear error: retry with the same key
                    self.sender_errors[type(exc).__name__] += 1
                    self.sender_error_messages.append(f"{exc.code}: {exc}")
                    self.log.append(f"{time.monotonic():.3f} {name} {body}: {exc!r}")
                    await asyncio.sleep(0.1)
                    continue
                self.acked[body] = reply.id
                if len(self.acked) % 50 == 0:
                    self.log.append(f"{time.monotonic():.3f} {len(self.acked)} acked")
                break

    async def receiver(self, nc: NATS, name: str, senders: list[str]) -> None:
        def mine(body: str) -> bool:
            return body.split("-", 1)[0] in senders

        while True:
            expected = {b for b in self.acked if mine(b)}
            if self.senders_done.is_set() and expected <= set(self.received):
                return
            try:
                reply = await rpc.request(
                    nc,
                    subjects.agent(name, subjects.AGENT_RECV),
                    RecvRequest(wait_ms=500),
                    RecvReply,
                    timeout=CALL_TIMEOUT + 0.5,
                )
            except HiveError:
                await asyncio.sleep(0.1)
                continue
            if reply.message is None:
                continue
            self.received[reply.message.body] += 1
            with contextlib.suppress(HiveError):  # unacked: handed out again later
                await rpc.request(
                    nc,
                    subjects.agent(name, subjects.AGENT_ACK),
                    AckRequest(id=reply.message.id),
                    Ok,
                    timeout=CALL_TIMEOUT,
                )

    async def run(
        self,
        senders: list[tuple[str, NATS]],
        receivers: list[tuple[str, NATS]],
        disrupt_after: int,
        disrupt: Callable[[], Awaitable[None]],
        timeout: float = 150,
    ) -> None:
        """Runs the traffic; ``disrupt`` runs once ``disrupt_after`` sends were acked."""
        pairs = list(zip(senders, receivers, strict=True))

        async def send_all() -> None:
            await asyncio.gather(
                *(self.sender(snc, s, r, lane) for (s, snc), (r, _) in pairs for lane in range(2))
            )
            self.senders_done.set()

        async def disruptor() -> None:
            await rig.eventually(lambda: len(self.acked) >= disrupt_after, timeout=60)
            before = len(self.acked)
            await disrupt()
            self.acked_when_disrupted = (before, len(self.acked))

        async with asyncio.timeout(timeout):
            await asyncio.gather(
                send_all(),
                disruptor(),
                *(self.receiver(rnc, r, [s]) for (s, _), (r, rnc) in pairs),
            )

    def lost(self) -> set[str]:
        """Acknowledged sends never delivered."""
        return set(self.acked) - set(self.received)


async def spawn_pairs(hive: Hive, n: int) -> tuple[list[tuple[str, NATS]], list[tuple[str, NATS]]]:
    senders = [await hive.spawn(unique("s")) for _ in range(n)]
    receivers = [await hive.spawn(unique("r")) for _ in range(n)]
    return senders, receivers


async def ping(nc: NATS, timeout: float = 2.0) -> Pong:
    return await rpc.request(nc, subjects.admin("broker", "ping"), Ping(), Pong, timeout=timeout)


async def wait_serving(nc: NATS, timeout: float = 60) -> None:
    async def up() -> bool:
        try:
            return (await ping(nc)).database == "ok"
        except HiveError:
            return False

    await rig.eventually(up, timeout=timeout, interval=0.2, what="broker serving")


async def stored_count(hive: Hive, agent: str) -> int:
    reply = await rpc.request(
        hive.operator,
        subjects.admin("broker", "messages"),
        MessagesRequest(agent=agent, limit=1000),
        HistoryReply,
        timeout=30,
    )
    return len(reply.messages)


async def test_sigkill_during_traffic_loses_no_acknowledged_send(
    postgres_server: EmbeddedPostgres, tmp_path: Path, sigkill_guard
):
    per_sender = 250  # 2 senders x 2 lanes x 250 = 1,000 messages
    with rig.nats_server() as nats:
        db = await rig.create_database(postgres_server.url)
        settings = broker_settings(nats, db, tmp_path / "home")
        async with hive_of(nats, settings, broker=False) as hive:
            senders, receivers = await spawn_pairs(hive, 2)
            sigkill_guard.append(rig.start_service_process("broker", settings, tmp_path))
            await wait_serving(hive.operator)
            traffic = Traffic(per_sender)

            async def kill_and_restart() -> None:
                serving = await ping(hive.operator, timeout=10)
                assert serving.pid == sigkill_guard[-1].proc.pid  # the one we kill serves
                # in a thread: the senders and receivers keep going meanwhile
                code = await asyncio.to_thread(sigkill_guard[-1].stop, signal.SIGKILL)
                assert code == -signal.SIGKILL
                traffic.log.append(f"{time.monotonic():.3f} killed")
                sigkill_guard.append(rig.start_service_process("broker", settings, tmp_path))

            await traffic.run(senders, receivers, disrupt_after=300, disrupt=kill_and_restart)

            assert len(traffic.acked) == 4 * per_sender
            assert traffic.lost() == set()
            assert traffic.acked_when_disrupted[1] < 4 * per_sender
            print("\n".join(traffic.log))  # shown if the test fails
            assert traffic.sender_errors  # the senders noticed the crash
            assert set(traffic.sender_errors) <= {"Unavailable", "RequestTimeout"}
            # retries after the kill reused their keys: nothing was stored twice
            for name, _ in receivers:
                assert await stored_count(hive, name) == 2 * per_sender
            # the restarted broker drained the outbox: every transition that was
            # committed reached HIVE_EVENTS, once (a row published just before
            # the kill and again after the restart is deduplicated)
            await assert_events_match_rows(hive, db, traffic)
            sigkill_guard[-1].stop()


async def assert_events_match_rows(hive: Hive, db: str, traffic: Traffic) -> None:
    """Once the outbox is drained, HIVE_EVENTS holds each committed transition
    of each stored message exactly once, the acknowledged sends among them."""
    conn = await asyncpg.connect(db)
    try:
        await rig.eventually(lambda: _outbox_empty(conn), timeout=30, what="outbox drained")
        rows = await conn.fetch(
            "SELECT id, deliveries, acked_at IS NOT NULL AS acked FROM broker.messages"
        )
    finally:
        await conn.close()
    events = await message_events(hive.service)
    kinds = collections.Counter((e.kind, e.data["id"]) for e in events)
    sent = {i for k, i in kinds if k == subjects.EV_MESSAGE_SENT}
    assert set(traffic.acked.values()) <= sent
    expected: collections.Counter[tuple[str, object]] = collections.Counter()
    for r in rows:
        expected[(subjects.EV_MESSAGE_SENT, r["id"])] = 1
        if r["deliveries"] > 0:
            expected[(subjects.EV_MESSAGE_DELIVERED, r["id"])] = 1
        if r["deliveries"] > 1:
            expected[(subjects.EV_MESSAGE_REDELIVERED, r["id"])] = r["deliveries"] - 1
        if r["acked"]:
            expected[(subjects.EV_MESSAGE_ACKED, r["id"])] = 1
    missing = expected - kinds
    extra = kinds - expected
    assert (missing, extra) == (collections.Counter(), collections.Counter())


async def test_two_broker_instances_serve_together_losing_and_doubling_nothing(
    postgres_server: EmbeddedPostgres, tmp_path: Path, sigkill_guard
):
    """Two ``hive serve broker`` on one database share the traffic (a NATS queue
    group): every acknowledged send is delivered once, a recv waiting on one
    instance is woken by a send the other committed, each transition reaches
    HIVE_EVENTS once."""
    per_sender = 150  # 2 senders x 2 lanes x 150 = 600 messages
    with rig.nats_server() as nats:
        db = await rig.create_database(postgres_server.url)
        # no lease expires during the test: a message handed out twice is a bug
        settings = broker_settings(
            nats, db, tmp_path / "home", HIVE_BROKER_VISIBILITY_TIMEOUT_S="120"
        )
        async with hive_of(nats, settings, broker=False) as hive:
            senders, receivers = await spawn_pairs(hive, 2)
            for _ in range(2):
                sigkill_guard.append(rig.start_service_process("broker", settings, tmp_path))
            pids: set[int] = set()

            async def both_serving() -> bool:
                with contextlib.suppress(HiveError):
                    pong = await ping(hive.operator)
                    if pong.database == "ok":
                        pids.add(pong.pid)
                return len(pids) == 2

            await rig.eventually(both_serving, timeout=60, interval=0.05, what="two brokers")
            assert pids == {p.proc.pid for p in sigkill_guard}

            traffic = Traffic(per_sender)

            async def nothing() -> None:
                pass

            await traffic.run(senders, receivers, disrupt_after=0, disrupt=nothing)
            assert len(traffic.acked) == 4 * per_sender
            assert traffic.lost() == set()
            assert set(traffic.received.values()) == {1}  # none handed out twice
            assert not traffic.sender_errors, traffic.sender_error_messages
            for name, _ in receivers:
                assert await stored_count(hive, name) == 2 * per_sender

            # long polls: whichever instance holds the recv, the send wakes it
            (s, snc), (r, rnc) = senders[0], receivers[0]
            for i in range(12):
                waiting = asyncio.ensure_future(recv(rnc, r, wait_ms=30_000))
                await rig.eventually(
                    lambda: recv_waiting(hive.operator, pids), what="the recv waits"
                )
                t0 = time.monotonic()
                sent = await send(snc, s, r, f"wake {i}")
                got = await waiting
                assert got.message is not None and got.message.id == sent.id
                assert time.monotonic() - t0 < 5.0, f"recv {i} not woken by the send"
                await rpc.request(
                    rnc, subjects.agent(r, subjects.AGENT_ACK), AckRequest(id=sent.id), Ok
                )
                traffic.acked[f"wake {i}"] = sent.id
            await assert_events_match_rows(hive, db, traffic)
            for proc in sigkill_guard:
                assert proc.stop() == 0, proc.output()


async def recv_waiting(nc: NATS, pids: set[int]) -> bool:
    """Whether one of the broker instances ``pids`` holds a request besides the
    ping that asks (a waiting recv), from a fresh ping of each instance."""
    seen: dict[int, int] = {}
    for _ in range(50):  # pings go to either instance: until both answered
        pong = await ping(nc)
        seen[pong.pid] = pong.in_flight - 1
        if set(seen) == pids:
            return sum(seen.values()) >= 1
    return False


async def test_nats_restart_mid_stream_loses_nothing_and_the_broker_reconnects(
    postgres_server: EmbeddedPostgres, tmp_path: Path
):
    per_sender = 150
    with rig.nats_server() as nats:
        db = await rig.create_database(postgres_server.url)
        settings = broker_settings(nats, db, tmp_path / "home")
        async with hive_of(nats, settings) as hive:
            senders, receivers = await spawn_pairs(hive, 2)
            traffic = Traffic(per_sender)

            async def restart_nats() -> None:
                await asyncio.to_thread(nats.stop)
                await asyncio.sleep(0.5)  # a real outage, not a blip
                await asyncio.to_thread(nats.start)

            await traffic.run(senders, receivers, disrupt_after=150, disrupt=restart_nats)

            assert len(traffic.acked) == 4 * per_sender
            assert traffic.lost() == set()
            # mid-stream: sends were acked before and after the restart
            assert traffic.acked_when_disrupted[1] < 4 * per_sender
            # the senders saw clear errors (unavailable / timeout) or none (the
            # client buffers while reconnecting), nothing else
            assert set(traffic.sender_errors) <= {"Unavailable", "RequestTimeout"}
            await wait_serving(hive.operator)
            for name, _ in receivers:
                assert await stored_count(hive, name) == 2 * per_sender
            # the outbox relay reconnected too: every event reached HIVE_EVENTS
            conn = await asyncpg.connect(db)
            try:
                await rig.eventually(lambda: _outbox_empty(conn), timeout=30, what="outbox drained")
            finally:
                await conn.close()


async def message_events(nc: NATS) -> list[HiveEvent]:
    """Every ``message.*`` record in HIVE_EVENTS, oldest first."""
    js = nc.jetstream()
    family = subjects.event_family("message")
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=family)
    total = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(family, stream=subjects.EVENTS_STREAM, ordered_consumer=True)
    out: list[HiveEvent] = []
    try:
        while len(out) < total:
            msg = await sub.next_msg(timeout=10)
            out.append(msgspec.json.decode(msg.data, type=HiveEvent))
    finally:
        await sub.unsubscribe()
    return out


@contextlib.asynccontextmanager
async def hive_with_own_postgres(
    postgres_server: EmbeddedPostgres, tmp_path: Path
) -> AsyncIterator[tuple[Hive, EmbeddedPostgres, str]]:
    """A hive whose broker has a PostgreSQL of its own (the server and the
    broker's database URL), so a test can stop it while lifecycle's registry,
    on the shared server, stays up."""
    with rig.nats_server() as nats, rig.postgres_server() as private_pg:
        lifecycle_db = await rig.create_database(postgres_server.url)
        broker_db = await rig.create_database(private_pg.url)
        settings = broker_settings(nats, lifecycle_db, tmp_path / "home")
        own = broker_settings(nats, broker_db, tmp_path / "home")
        async with hive_of(nats, settings, broker_settings=own) as hive:
            yield hive, private_pg, broker_db


async def _outbox_empty(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT count(*) FROM broker.outbox") == 0


async def test_postgres_down_fails_sends_clearly_and_recovers_without_restart(
    postgres_server: EmbeddedPostgres, tmp_path: Path
):
    async with hive_with_own_postgres(postgres_server, tmp_path) as (hive, private_pg, _db):
        a, na = await hive.spawn()
        b, nb = await hive.spawn()
        before = await send(na, a, b, "before the outage")

        await asyncio.to_thread(private_pg.stop)
        with pytest.raises(Unavailable, match="database unavailable"):
            await send(na, a, b, "during the outage")
        with pytest.raises(Unavailable, match="database unavailable"):
            await recv(nb, b)
        assert (await ping(hive.operator)).database.startswith("error")

        await asyncio.to_thread(private_pg.start)

        async def sent() -> SendReply | None:
            try:
                return await send(na, a, b, "after the outage")
            except Unavailable:
                return None

        after = await rig.eventually(sent, timeout=30, what="send works again")
        got = [await recv(nb, b) for _ in range(2)]
        assert [g.message.id for g in got if g.message] == [before.id, after.id]
        assert [g.message.body for g in got if g.message] == [
            "before the outage",
            "after the outage",
        ]


def stop_postgres(pg: EmbeddedPostgres, mode: str) -> None:
    """``pg_ctl stop -m <mode>``: ``fast`` ends sessions cleanly, ``immediate`` is a crash."""
    done = pg._run([str(pg.bin_dir / "pg_ctl"), "-D", str(pg.data_dir), "-m", mode, "-w", "stop"])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_stop_under_load_loses_no_acknowledged_send(
    postgres_server: EmbeddedPostgres, tmp_path: Path, mode: str
):
    per_sender = 100  # 2 senders x 2 lanes x 100 = 400 messages
    async with hive_with_own_postgres(postgres_server, tmp_path) as (
        hive,
        private_pg,
        broker_db,
    ):
        senders, receivers = await spawn_pairs(hive, 2)
        traffic = Traffic(per_sender)

        async def outage() -> None:
            await asyncio.to_thread(stop_postgres, private_pg, mode)
            traffic.log.append(f"{time.monotonic():.3f} postgres stopped ({mode})")
            await asyncio.sleep(1.5)  # the senders meet a database that is gone
            await asyncio.to_thread(private_pg.start)
            traffic.log.append(f"{time.monotonic():.3f} postgres started")

        await traffic.run(senders, receivers, disrupt_after=100, disrupt=outage)
        print("\n".join(traffic.log))  # shown if the test fails

        assert len(traffic.acked) == 4 * per_sender
        assert traffic.acked_when_disrupted[1] < 4 * per_sender  # under load
        # only clear errors while the database was gone, never a success
        # reply for a message that was not committed (checked below)
        assert traffic.sender_errors["Unavailable"] > 0
        assert set(traffic.sender_errors) <= {"Unavailable", "RequestTimeout"}, sorted(
            set(traffic.sender_error_messages)
        )
        unclear = [
            m
            for m in traffic.sender_error_messages
            if m.startswith("unavailable") and "database unavailable" not in m
        ]
        assert unclear == []
        # every acknowledged send is committed, once, with the id it was given
        conn = await asyncpg.connect(broker_db)
        try:
            rows = await conn.fetch("SELECT id, body FROM broker.messages")
        finally:
            await conn.close()
        stored = {r["body"]: r["id"] for r in rows}
        assert len(rows) == len(stored) == 4 * per_sender
        assert {b: stored.get(b) for b in traffic.acked} == traffic.acked
        # ... and was delivered
        assert traffic.lost() == set()
        # served again without a restart: the same process, database ok
        await wait_serving(hive.operator)
        after = await send(senders[0][1], senders[0][0], receivers[0][0], "after it all")
        got = await recv(receivers[0][1], receivers[0][0], wait_ms=20_000)
        while got.message is not None and got.message.id != after.id:
            got = await recv(receivers[0][1], receivers[0][0], wait_ms=20_000)
        assert got.message is not None and got.message.body == "after it all"


async def test_unreachable_registry_refuses_unknown_recipients_clearly(
    postgres_server: EmbeddedPostgres, tmp_path: Path
):
    with rig.nats_server() as nats:
        db = await rig.create_database(postgres_server.url)
        settings = broker_settings(nats, db, tmp_path / "home")
        sender = unique("s")
        seed = rig.add_agent_user(nats, sender)
        nc = await rig.connect_as(nats, seed, subjects.inbox_prefix(sender))
        try:
            async with rig.running_service("broker", settings):
                with pytest.raises(Unavailable, match="lifecycle"):
                    await send(nc, sender, "ghost", "anyone?")
                await send(nc, sender, subjects.OPERATOR, "the operator is always there")
                async with hive_of(nats, settings, broker=False) as hive:
                    b, _ = await hive.spawn()
                    await send(nc, sender, b, "while lifecycle runs")
                # lifecycle stopped: the broker still knows b, and cannot check ghost2
                await send(nc, sender, b, "known without asking")
                with pytest.raises(Unavailable, match="lifecycle"):
                    await send(nc, sender, "ghost2", "anyone?")
        finally:
            await nc.close()
