"""The rig itself: a service runs in-process and answers ping."""

from hyperhive.common import rpc, subjects
from hyperhive.common.wire.base import Ping, Pong
from tests.rig import running_service


async def test_broker_answers_ping(settings, service_nc):
    async with running_service("broker", settings):
        pong = await rpc.request(service_nc, subjects.admin("broker", "ping"), Ping(), Pong)
    assert pong.service == "broker"
    assert pong.database == "ok"
