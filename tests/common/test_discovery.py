"""``nats micro ls|info|stats`` see hyperhive's services, as the operator."""

import asyncio
import json
from contextlib import AsyncExitStack

import pytest
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from hyperhive.common import endpoints, rpc, wire
from hyperhive.common.errors import BadRequest
from tests import rig

PART = "crash-watch"


async def _ask(nc, subject: str) -> dict:
    return json.loads((await nc.request(subject, b"", timeout=5)).data)


async def test_the_operator_discovers_every_instance_with_its_endpoints_and_counts(
    settings, operator_nc
):
    async with AsyncExitStack() as stack:
        for _ in range(2):  # two instances share the queue group; each is listed
            await stack.enter_async_context(rig.running_service(PART, settings))
        pongs: list[dict] = []
        both = asyncio.Event()

        async def collect(msg) -> None:
            pongs.append(json.loads(msg.data))
            if len(pongs) == 2:
                both.set()

        inbox = f"_INBOX.operator.discovery{id(pongs)}"
        sub = await operator_nc.subscribe(inbox, cb=collect)
        await operator_nc.publish("$SRV.PING", b"", reply=inbox)
        await asyncio.wait_for(both.wait(), 10)
        await sub.unsubscribe()
        pings = [ServicePing.from_dict(p) for p in pongs if p["name"] == PART]
        assert len({p.id for p in pings}) == 2

        one = pings[0].id
        info = ServiceInfo.from_dict(await _ask(operator_nc, f"$SRV.INFO.{PART}.{one}"))
        assert info.id == one
        assert {e.subject for e in info.endpoints} == {
            e.served_on for e in endpoints.served_by(PART)
        }
        assert {e.queue_group for e in info.endpoints} == {f"hive-{PART}"}

        # one good and one bad request, both answered by some instance
        await rpc.call(operator_nc, endpoints.PING[PART], wire.Ping())
        with pytest.raises(BadRequest):
            await _bad_ping(operator_nc)
        totals = {"requests": 0, "errors": 0}
        last_errors = []
        for pid in {p.id for p in pings}:
            stats = ServiceStats.from_dict(await _ask(operator_nc, f"$SRV.STATS.{PART}.{pid}"))
            [ping] = [e for e in stats.endpoints if e.name == "admin-ping"]
            totals["requests"] += ping.num_requests
            totals["errors"] += ping.num_errors
            last_errors.append(ping.last_error)
        assert totals == {"requests": 2, "errors": 1}
        assert any(e.startswith("bad_request:") for e in last_errors)


async def _bad_ping(nc) -> None:
    reply = await nc.request(endpoints.PING[PART].subject(), b"not json", timeout=5)
    rpc.decode_reply(reply.data, wire.Pong)
