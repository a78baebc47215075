"""Request/reply against a real NATS server: errors, timeouts, bad input."""

import asyncio
import uuid

import pytest

from hyperhive.common import errors, rpc, wire
from hyperhive.common.natsconn import sync_subscriptions


def _subject() -> str:
    return f"hive.admin.test{uuid.uuid4().hex[:8]}.verb"


async def test_handler_reply_and_error_reply(service_nc):
    subject = _subject()
    responder = rpc.Responder(service_nc, queue="t")

    async def handler(req: wire.SendRequest, call: rpc.Call) -> wire.SendReply:
        if req.to == "nobody":
            raise errors.NotFound("no agent named 'nobody'")
        return wire.SendReply(id=len(req.body), ts=1.0)

    await responder.serve(subject, wire.SendRequest, handler)
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

    await responder.serve(subject, wire.SendRequest, handler)
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

    await responder.serve(subject, wire.Empty, handler)
    await sync_subscriptions(service_nc)
    with pytest.raises(errors.Internal):
        await rpc.request(service_nc, subject, wire.Empty(), wire.Ok)
    assert (await rpc.request(service_nc, subject, wire.Empty(), wire.Ok)).ok
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

    await responder.serve(subject, wire.Empty, handler)
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

    await responder.serve(subject, wire.RecvRequest, handler)
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

    await responder.serve(subject, wire.Empty, handler)
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

    await responder.serve(f"hive.agent.*.probe{name}", wire.Empty, handler)
    await sync_subscriptions(service_nc)
    await rpc.request(service_nc, f"hive.agent.{name}.probe{name}", wire.Empty(), wire.Ok)
    assert seen == [(name, f"probe{name}")]
    await responder.stop()
