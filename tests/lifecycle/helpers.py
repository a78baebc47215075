"""Calling lifecycle as the operator or a service, and watching its events."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from nats.aio.client import Client as NATS

from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import Unavailable
from hyperhive.common.natsconn import sync_subscriptions
from hyperhive.common.paths import AgentPaths
from hyperhive.common.service import Runtime
from hyperhive.common.wire.base import Empty, Ok, Ping, Pong
from hyperhive.common.wire.events import HiveEvent
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentRequest,
    AgentsReply,
    AgentsRequest,
    DestroyRequest,
    KeptStatesReply,
    SpawnRequest,
)
from tests import rig
from tests.rig import pid_alive

TIMEOUT = 30.0


@asynccontextmanager
async def serving(part: str, settings: Settings, nc: NATS) -> AsyncIterator[Runtime]:
    """``rig.running_service``, then waits until ``nc`` sees its subscriptions.

    nats-server 2.15 can answer "no responders" for a few milliseconds after
    another connection's SUB was flushed; a test's first request must not race it.
    """
    async with rig.running_service(part, settings) as rt:
        await rig.eventually(lambda: _answers(nc, part), timeout=10, what=f"{part} answers")
        yield rt


async def _answers(nc: NATS, part: str) -> bool:
    try:
        await rpc.request(nc, subjects.admin(part, "ping"), Ping(), Pong, timeout=5)
    except Unavailable:
        return False
    return True


def admin(verb: str) -> str:
    return subjects.admin("lifecycle", verb)


def system(verb: str) -> str:
    return subjects.system("lifecycle", verb)


class Operator:
    """The operator's lifecycle verbs over one NATS connection."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    async def spawn(self, name: str, reuse_state: bool = True) -> AgentInfo:
        return await rpc.request(
            self.nc,
            admin("spawn"),
            SpawnRequest(name=name, reuse_state=reuse_state),
            AgentInfo,
            timeout=TIMEOUT,
        )

    async def verb(self, verb: str, name: str) -> AgentInfo:
        return await rpc.request(
            self.nc, admin(verb), AgentRequest(name=name), AgentInfo, timeout=TIMEOUT
        )

    async def destroy(self, name: str, purge: bool = False) -> None:
        await rpc.request(
            self.nc, admin("destroy"), DestroyRequest(name=name, purge=purge), Ok, timeout=TIMEOUT
        )

    async def list(self, include_destroyed: bool = False) -> dict[str, AgentInfo]:
        reply = await rpc.request(
            self.nc,
            admin("list"),
            AgentsRequest(include_destroyed=include_destroyed),
            AgentsReply,
            timeout=TIMEOUT,
        )
        return {a.name: a for a in reply.agents}

    async def kept(self) -> dict[str, int]:
        reply = await rpc.request(self.nc, admin("kept"), Empty(), KeptStatesReply)
        return {k.name: k.bytes for k in reply.kept}


class Events:
    """Collects ``hive.events.agent.*`` (core subscription) for one test."""

    def __init__(self) -> None:
        self.items: list[HiveEvent] = []
        self._dec = msgspec.json.Decoder(HiveEvent)

    async def start(self, nc: NATS) -> Events:
        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            self.items.append(self._dec.decode(msg.data))

        self._sub = await nc.subscribe("hive.events.agent.*", cb=on_msg)
        await sync_subscriptions(nc)
        return self

    async def stop(self) -> None:
        await self._sub.unsubscribe()

    def of(self, agent: str, kind: str | None = None) -> list[HiveEvent]:
        return [e for e in self.items if e.agent == agent and (kind is None or e.kind == kind)]

    def states(self, agent: str) -> list[tuple[str | None, str, str | None]]:
        """``(previous, state, flag)`` of each agent.state event."""
        return [
            (e.data.get("previous"), e.data["state"], e.data.get("flag"))
            for e in self.of(agent, subjects.EV_AGENT_STATE)
        ]


def harness_pid(settings, name: str) -> int:  # type: ignore[no-untyped-def]
    return int(AgentPaths.of(settings, name).pid_file.read_text().split()[0])


async def wait_dead(pid: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pid_alive(pid):
        assert loop.time() < deadline, f"pid {pid} still alive"
        await asyncio.sleep(0.05)


def kill(pid: int, sig: int) -> None:
    os.kill(pid, sig)
