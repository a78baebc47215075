"""Broker fixtures: the real lifecycle (agent registry, NATS credentials) and
the broker in this process, agents connected with their own credentials.

Lifecycle's harness command is ``sleep``: the harness is not what these tests
are about, only the registry and the credentials lifecycle issues.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.natsconn import sync_subscriptions
from hyperhive.common.paths import AgentPaths
from hyperhive.common.service import Runtime
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import (
    AckRequest,
    RecvReply,
    RecvRequest,
    SendReply,
    SendRequest,
)
from hyperhive.common.wire.events import HiveEvent
from hyperhive.common.wire.lifecycle import AgentInfo, DestroyRequest, SpawnRequest
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.rig import cleanup_agents

T = TypeVar("T", bound=msgspec.Struct)
TIMEOUT = 30.0


def unique(prefix: str = "b") -> str:
    """A fresh agent name (at most 9 characters; NATS is shared by the session)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"[:9]


def broker_settings(
    nats: EmbeddedNats, database_url: str, home: Path, **overrides: str
) -> Settings:
    """Lifecycle + broker settings: a ``sleep`` harness, a short visibility timeout."""
    env = {"HIVE_BROKER_VISIBILITY_TIMEOUT_S": "2"}
    env.update(overrides)
    return lifecycle_settings(nats, database_url, home, **env)


def reap_harnesses(agents_dir: Path) -> None:
    """Kills and reaps the ``sleep`` harnesses lifecycle started from this process."""
    for pid_file in agents_dir.glob("*/run/harness.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@dataclass
class Hive:
    """Lifecycle + broker running; agents spawned through lifecycle."""

    nats: EmbeddedNats
    settings: Settings
    operator: NATS
    service: NATS
    conns: dict[str, NATS] = field(default_factory=dict)
    broker: Runtime | None = None  # the broker running in this process

    async def handling(self, count: int, *extra: Runtime) -> bool:
        """Whether this process's broker instances (``broker`` and ``extra``)
        are handling at least ``count`` requests (a waiting recv is one)."""
        runtimes = [rt for rt in (self.broker, *extra) if rt is not None]
        return sum(rt.responder.in_flight for rt in runtimes) >= count

    async def spawn(self, name: str | None = None) -> tuple[str, NATS]:
        """Spawns an agent (as the operator would) and connects with its own credentials."""
        name = name or unique()
        await rpc.request(
            self.operator,
            subjects.admin("lifecycle", "spawn"),
            SpawnRequest(name=name),
            AgentInfo,
            timeout=60,
        )
        return name, await self.connect(name)

    async def connect(self, name: str) -> NATS:
        seed = AgentPaths.of(self.settings, name).nats_seed
        nc = await rig.connect_as(self.nats, seed, subjects.inbox_prefix(name))
        self.conns[name] = nc
        return nc

    async def destroy(self, name: str) -> None:
        """Destroys an agent; its connection is closed (its credentials are gone)."""
        nc = self.conns.pop(name, None)
        if nc is not None:
            await nc.close()
        await rpc.request(
            self.operator,
            subjects.admin("lifecycle", "destroy"),
            DestroyRequest(name=name),
            Ok,
            timeout=60,
        )

    async def close(self) -> None:
        for nc in self.conns.values():
            await nc.close()
        self.conns.clear()


@contextlib.asynccontextmanager
async def hive_of(
    nats: EmbeddedNats,
    settings: Settings,
    *,
    broker: bool = True,
    broker_settings: Settings | None = None,
) -> AsyncIterator[Hive]:
    """Lifecycle (and the broker unless ``broker=False``) in this process.

    ``broker_settings`` lets the broker use other settings (e.g. a private
    Postgres) than lifecycle.
    """
    operator = await rig.connect_as(nats, nats.operator_seed, subjects.inbox_prefix("operator"))
    service = await rig.connect_as(nats, nats.service_seed)
    hive = Hive(nats, settings, operator, service)
    try:
        async with rig.running_service("lifecycle", settings):
            if broker:
                async with rig.running_service("broker", broker_settings or settings) as rt:
                    hive.broker = rt
                    yield hive
            else:
                yield hive
    finally:
        await hive.close()
        await operator.close()
        await service.close()
        reap_harnesses(settings.paths.agents_dir)
        cleanup_agents(nats, settings.paths.agents_dir)


@pytest.fixture(scope="package")
async def hive(
    nats_server: EmbeddedNats, postgres_server: EmbeddedPostgres, tmp_path_factory
) -> AsyncIterator[Hive]:
    """One lifecycle + broker for the broker tests that need no private servers.

    Starting both costs seconds, so they are shared; each test uses its own
    agents (unique names), which is all the state a test looks at.
    """
    database_url = await rig.create_database(postgres_server.url)
    home = tmp_path_factory.mktemp("broker-home")
    settings = broker_settings(nats_server, database_url, home)
    async with hive_of(nats_server, settings) as h:
        yield h


# --- calling the broker ---------------------------------------------------------


async def call(nc: NATS, name: str, verb: str, req: msgspec.Struct, reply: type[T]) -> T:
    """A request as agent ``name`` on ``hive.agent.<name>.<verb>``."""
    return await rpc.request(nc, subjects.agent(name, verb), req, reply, timeout=TIMEOUT)


async def send(nc: NATS, name: str, to: str, body: str, key: str | None = None) -> SendReply:
    return await call(
        nc, name, "send", SendRequest(to=to, body=body, idempotency_key=key), SendReply
    )


async def recv(nc: NATS, name: str, wait_ms: int = 0) -> RecvReply:
    return await rpc.request(
        nc,
        subjects.agent(name, "recv"),
        RecvRequest(wait_ms=wait_ms),
        RecvReply,
        timeout=TIMEOUT + wait_ms / 1000,
    )


async def ack(nc: NATS, name: str, message_id: int) -> None:
    await call(nc, name, "ack", AckRequest(id=message_id), Ok)


async def admin(nc: NATS, verb: str, req: msgspec.Struct, reply: type[T]) -> T:
    return await rpc.request(nc, subjects.admin("broker", verb), req, reply, timeout=TIMEOUT)


class EventLog:
    """``message.*`` records from HIVE_EVENTS as they are published (core subscription)."""

    def __init__(self) -> None:
        self.events: list[HiveEvent] = []
        self._changed = asyncio.Event()

    async def _on(self, msg: Msg) -> None:
        self.events.append(msgspec.json.decode(msg.data, type=HiveEvent))
        self._changed.set()

    def of(self, message_id: int) -> list[str]:
        return [e.kind for e in self.events if e.data.get("id") == message_id]

    async def wait_for(self, message_id: int, kinds: list[str], timeout: float = TIMEOUT) -> None:
        """Until the events of ``message_id`` are exactly ``kinds`` (in order)."""

        def done() -> bool:
            return self.of(message_id) == kinds

        await rig.eventually(done, timeout=timeout, what=f"events {kinds} of message {message_id}")


@pytest.fixture
async def events(service_nc: NATS) -> AsyncIterator[EventLog]:
    log = EventLog()
    sub = await service_nc.subscribe(subjects.event_family("message"), cb=log._on)
    await sync_subscriptions(service_nc)
    yield log
    await sub.unsubscribe()


@pytest.fixture
def sigkill_guard() -> Iterator[list[rig.ServiceProcess]]:
    """Service processes a test started; killed at the end whatever happened."""
    procs: list[rig.ServiceProcess] = []
    yield procs
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)
