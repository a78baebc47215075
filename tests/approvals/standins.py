"""A test-local stand-in for the broker's ``deliver`` until the real broker serves it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from hyperhive.common import subjects
from hyperhive.common.rpc import Call, Responder
from hyperhive.common.wire.broker import DeliverRequest, SendReply


@dataclass
class BrokerStandIn:
    delivered: list[DeliverRequest] = field(default_factory=list)

    async def deliver(self, req: DeliverRequest, _c: Call) -> SendReply:
        self.delivered.append(req)
        return SendReply(id=len(self.delivered), ts=time.time())


@contextlib.asynccontextmanager
async def broker_standin(nc: NATS) -> AsyncIterator[BrokerStandIn]:
    s = BrokerStandIn()
    r = Responder(nc, queue="standin")
    await r.serve(subjects.system("broker", "deliver"), DeliverRequest, s.deliver)
    await nc.flush()
    try:
        yield s
    finally:
        await r.stop(1)
