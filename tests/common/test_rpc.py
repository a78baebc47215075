"""Request/reply against a real NATS server: errors, timeouts, bad input;
and the connection helper's reconnects."""

import asyncio
import itertools
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import nats.errors
import pytest

from hyperhive.cli.embedded import EmbeddedNats, free_port
from hyperhive.common import errors, rpc, wire
from hyperhive.common.config import NatsSettings
from hyperhive.common.natsconn import BACKOFF_CAP_S, backoff_delay, connect, sync_subscriptions


def _subject() -> str:
    return f"hive.admin.test{uuid.uuid4().hex[:8]}.verb"


async def test_handler_reply_and_error_reply(service_nc):
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")

    async def handler(req: wire.SendRequest, call: rpc.Call) -> wire.SendReply:
        if req.to == "nobody":
            raise errors.NotFound("no agent named 'nobody'")
        return wire.SendReply(id=len(req.body), ts=1.0)

    await responder.serve_subject(subject, wire.SendRequest, handler)
    await sync_subscriptions(service_nc)
    reply = await rpc.request(
        service_nc, subject, wire.SendRequest(to="b", body="abc"), wire.SendReply
    )
    assert reply.id == 3
    with pytest.raises(errors.NotFound, match="nobody"):
        await rpc.request(
            service_nc, subject, wire.SendRequest(to="nobody", body="x"), wire.SendReply
        )
    await responder.stop()


async def test_malformed_json_and_wrong_types_get_bad_request_and_service_keeps_serving(service_nc):
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")

    async def handler(req: wire.SendRequest, call: rpc.Call) -> None:
        return None

    await responder.serve_subject(subject, wire.SendRequest, handler)
    await sync_subscriptions(service_nc)
    for bad in (b"{not json", b'{"to": 5, "body": "x"}', b'{"body": "x"}', b"[]"):
        msg = await service_nc.request(subject, bad, timeout=5)
        with pytest.raises(errors.BadRequest):
            rpc.decode_reply(msg.data, wire.Ok)
    ok = await rpc.request(service_nc, subject, wire.SendRequest(to="b", body="x"), wire.Ok)
    assert ok.ok
    await responder.stop()


async def test_unexpected_exception_is_an_internal_error_not_a_crash(service_nc):
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")
    calls = 0

    async def handler(req: wire.Empty, call: rpc.Call) -> wire.Ok:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return wire.Ok()

    await responder.serve_subject(subject, wire.Empty, handler)
    await sync_subscriptions(service_nc)
    with pytest.raises(errors.Internal):
        await rpc.request(service_nc, subject, wire.Empty(), wire.Ok)
    assert (await rpc.request(service_nc, subject, wire.Empty(), wire.Ok)).ok
    await responder.stop()


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
    ids=["refused", "starting-up", "closed"],
)
async def test_database_outage_in_a_handler_is_unavailable_not_internal(service_nc, exc):
    """A handler that meets a PostgreSQL down or restarting answers ``unavailable``
    (worth a retry), as the broker's own store does, not ``internal``."""
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")

    async def handler(req: wire.Empty, call: rpc.Call) -> wire.Ok:
        raise exc

    await responder.serve_subject(subject, wire.Empty, handler)
    await sync_subscriptions(service_nc)
    with pytest.raises(errors.Unavailable, match=f"database unavailable, {subject} not done"):
        await rpc.request(service_nc, subject, wire.Empty(), wire.Ok)
    await responder.stop()


async def test_no_responder_is_unavailable_with_the_subject(service_nc):
    subject = _subject()
    with pytest.raises(errors.Unavailable, match=subject):
        await rpc.request(service_nc, subject, wire.Empty(), wire.Ok, timeout=2)


async def test_slow_handler_times_out_clearly(service_nc):
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")
    release = asyncio.Event()

    async def handler(req: wire.Empty, call: rpc.Call) -> wire.Ok:
        await release.wait()
        return wire.Ok()

    await responder.serve_subject(subject, wire.Empty, handler)
    await sync_subscriptions(service_nc)
    with pytest.raises(errors.RequestTimeout, match=r"within 0\.3s"):
        await rpc.request(service_nc, subject, wire.Empty(), wire.Ok, timeout=0.3)
    release.set()
    await responder.stop()


async def test_long_running_request_does_not_block_the_next(service_nc):
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")
    release = asyncio.Event()

    async def handler(req: wire.RecvRequest, call: rpc.Call) -> wire.Ok:
        if req.wait_ms:
            await release.wait()
        return wire.Ok()

    await responder.serve_subject(subject, wire.RecvRequest, handler)
    await sync_subscriptions(service_nc)
    slow = asyncio.create_task(
        rpc.request(service_nc, subject, wire.RecvRequest(wait_ms=1), wire.Ok, timeout=10)
    )
    assert (await rpc.request(service_nc, subject, wire.RecvRequest(), wire.Ok, timeout=5)).ok
    release.set()
    assert (await slow).ok
    await responder.stop()


async def test_stop_lets_in_flight_handlers_finish(service_nc):
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")
    started = asyncio.Event()

    async def handler(req: wire.Empty, call: rpc.Call) -> wire.Ok:
        started.set()
        await asyncio.sleep(0.3)
        return wire.Ok()

    await responder.serve_subject(subject, wire.Empty, handler)
    await sync_subscriptions(service_nc)
    pending = asyncio.create_task(rpc.request(service_nc, subject, wire.Empty(), wire.Ok))
    await started.wait()
    await responder.stop(grace_s=5)
    assert (await pending).ok


async def test_call_knows_the_calling_agent_from_the_subject(service_nc):
    name = f"a{uuid.uuid4().hex[:6]}"
    responder = rpc.Responder(service_nc, queue="t")
    seen = []

    async def handler(req: wire.Empty, call: rpc.Call) -> None:
        seen.append((call.agent, call.verb))

    await responder.serve_subject(f"hive.agent.*.probe{name}", wire.Empty, handler)
    await sync_subscriptions(service_nc)
    await rpc.request(service_nc, f"hive.agent.{name}.probe{name}", wire.Empty(), wire.Ok)
    assert seen == [(name, f"probe{name}")]
    await responder.stop()


def test_reconnect_backoff_doubles_up_to_the_cap_with_jitter():
    ceilings = [min(BACKOFF_CAP_S, 0.5 * 2**n) for n in range(8)]
    assert ceilings[:5] == [0.5, 1.0, 2.0, 4.0, 5.0]
    for n, ceiling in enumerate(ceilings):
        assert backoff_delay(n, 0.5, rand=lambda: 0.0) == ceiling / 2
        assert backoff_delay(n, 0.5, rand=lambda: 0.999) == pytest.approx(ceiling, rel=1e-3)
        drawn = {backoff_delay(n, 0.5) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in drawn)
        assert len(drawn) > 1, "no jitter"
    assert backoff_delay(10_000, 0.5) <= BACKOFF_CAP_S  # no overflow however long it lasts


async def test_reconnect_waits_longer_after_each_failed_try_then_recovers():
    """While the server is gone, each try waits at least half of a doubling
    ceiling; once it is back, the client reconnects and its subscriptions work."""
    root = Path(tempfile.mkdtemp(prefix="hive-nats-reconnect-"))
    server = EmbeddedNats(root, free_port())
    server.start()
    base = 0.3
    nc = await connect(
        NatsSettings(url=server.url, connect_backoff_s=base),
        name="test-reconnect",
        seed_file=str(server.service_seed),
    )
    try:
        subject = f"hive.admin.test{uuid.uuid4().hex[:8]}.echo"

        async def echo(msg):
            await msg.respond(msg.data)

        await nc.subscribe(subject, cb=echo)
        await sync_subscriptions(nc)
        server.stop()

        # the port now answers and hangs up at once: every try fails, and we
        # see when each one came
        tries: list[float] = []
        enough = asyncio.Event()

        async def hang_up(_reader, writer):
            tries.append(time.monotonic())
            writer.close()
            if len(tries) >= 4:
                enough.set()

        fake = await asyncio.start_server(hang_up, "127.0.0.1", server.port, reuse_address=True)
        try:
            await asyncio.wait_for(enough.wait(), timeout=30)
        finally:
            fake.close()
            await fake.wait_closed()
        gaps = [b - a for a, b in itertools.pairwise(tries)][:3]
        # try n+1 waits at least half of base * 2**(n+1); a fixed wait of 1 s
        # (what nats-py does by default) fails the last of these
        floors = [base * 2 ** (n + 1) / 2 for n in range(3)]
        assert all(g >= f - 0.02 for g, f in zip(gaps, floors, strict=True)), (gaps, floors)

        server.start()
        reply = None
        deadline = time.monotonic() + 30
        while reply is None:
            assert time.monotonic() < deadline, "never reconnected"
            try:
                reply = await nc.request(subject, b"ping", timeout=1)
            except (nats.errors.Error, TimeoutError):  # not back yet
                await asyncio.sleep(0.1)
        assert reply.data == b"ping"
    finally:
        await nc.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
