"""Why nodes connect to the hub's NATS directly (docs/multihost.md).

A hub nats-server and a leaf nats-server whose link authenticates as an nkey
user of the hub's ``authorization`` block, with permissions for one node's
agents. These tests pin what nats-server (the version in this venv) does:
the link's permissions confine the leaf, but a reload neither changes them
nor revokes the link. If a nats-server upgrade makes the last test fail,
node-local leaf servers become possible: revisit docs/multihost.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest

from hyperhive.cli.embedded import free_port, nats_server_binary, wait_port
from hyperhive.common import nats_auth, subjects
from hyperhive.common.natsconn import sync_subscriptions

# without it nats-server denies $JS.API.>, $KV.>, $OBJ.> across the link
JS_OVER_LEAF = 'default_js_domain: {"$G": ""}\n'


def _users(users: list[nats_auth.NatsUser], kinds: dict[str, list[str]]) -> str:
    entries = []
    for user in users:
        entry: dict[str, object] = {"nkey": user.nkey}
        perms: dict[str, object] = {}
        if user.permissions.publish is not None:
            perms["publish"] = {"allow": user.permissions.publish}
        if user.permissions.subscribe is not None:
            perms["subscribe"] = {"allow": user.permissions.subscribe}
        if perms:
            entry["permissions"] = perms
        if user.name in kinds:
            entry["allowed_connection_types"] = kinds[user.name]
        entries.append(entry)
    return "authorization: " + json.dumps({"users": entries}) + "\n"


def leaf_permissions(node: str, agents: list[str]) -> nats_auth.Permissions:
    """What a node's leaf link would need: its agents' subjects and its own."""
    publish = [subjects.kv_subject(f"node.{node}"), f"_INBOX.node-{node}.>"]
    subscribe = [f"hive.node.{node}.>", f"_INBOX.node-{node}.>"]
    for agent in agents:
        publish += [subjects.agent_all(agent), subjects.kv_subject(subjects.heartbeat_key(agent))]
        subscribe.append(subjects.inbox_all(agent))
    return nats_auth.Permissions(publish=publish, subscribe=subscribe)


@dataclass
class Server:
    root: Path
    name: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def write(self, body: str) -> None:
        (self.root / f"{self.name}.conf").write_text(
            f'listen: "127.0.0.1:{self.port}"\nserver_name: {self.name}\n'
            f'pid_file: "{self.root / self.name}.pid"\n{body}'
        )

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.root / f"{self.name}.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, 15, self.proc, self.name)

    def reload(self) -> None:
        marker = "Reloaded server configuration"
        before = self.log.read_text().count(marker)
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.log.read_text().count(marker) <= before:
            assert time.monotonic() < deadline, f"{self.name} did not reload"
            time.sleep(0.02)
        time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class Bus:
    """A hub with JetStream and a leaf link for node ``n1`` (agents ``la``, ``lb``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub = Server(root, "hub")
        self.leaf = Server(root, "leaf")
        self.leaf_port = free_port()
        self.seeds = {n: nats_auth.new_seed() for n in ("service", "link", "la", "lb", "evil")}
        self.link_agents: list[str] | None = ["la"]  # None: the link's user is removed

    def user(self, name: str, perms: nats_auth.Permissions | None = None) -> nats_auth.NatsUser:
        return nats_auth.NatsUser(
            name=name,
            nkey=nats_auth.public_key(self.seeds[name]),
            permissions=perms or nats_auth.Permissions(),
        )

    def write_hub(self) -> None:
        users = [self.user("service")]
        if self.link_agents is not None:
            users.append(self.user("link", leaf_permissions("n1", self.link_agents)))
        self.hub.write(
            f'jetstream {{ store_dir: "{self.root / "js"}" }}\n'
            f'leafnodes {{ listen: "127.0.0.1:{self.leaf_port}" }}\n'
            + JS_OVER_LEAF
            + _users(users, {"link": ["LEAFNODE"]})
        )

    def write_leaf(self, agents: list[str]) -> None:
        users = [self.user("evil")]  # a root on the node: every local permission
        users += [self.user(a, nats_auth.agent_permissions(a)) for a in agents]
        self.leaf.write(
            f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{self.leaf_port}", '
            f'nkey: "{self.seeds["link"].decode()}" }} ] }}\n' + JS_OVER_LEAF + _users(users, {})
        )

    def links_made(self) -> int:
        return self.hub.log.read_text().count("Leafnode connection created")

    async def connect(self, name: str, on_leaf: bool = True) -> nats.NATS:
        return await nats.connect(
            self.leaf.url if on_leaf else self.hub.url,
            nkeys_seed_str=self.seeds[name].decode(),
            inbox_prefix=subjects.inbox_prefix(name),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=_quiet,
        )


async def _quiet(_exc: Exception) -> None:
    """Permission violations are what some probes expect."""


@pytest.fixture
def bus() -> Iterator[Bus]:
    root = Path(tempfile.mkdtemp(prefix="hive-leaf-"))
    bus = Bus(root)
    bus.write_hub()
    bus.write_leaf(["la"])
    try:
        bus.hub.start()
        bus.leaf.start()
        deadline = time.monotonic() + 15
        while bus.links_made() < 1:
            assert time.monotonic() < deadline, "the leaf did not link to the hub"
            time.sleep(0.05)
        yield bus
    finally:
        bus.leaf.stop()
        bus.hub.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def echo_service(bus: Bus) -> AsyncIterator[nats.NATS]:
    """The hub's services: answer every hive.> request, keep hive_state."""
    nc = await bus.connect("service", on_leaf=False)

    async def echo(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(b"echo " + msg.subject.encode())

    await nc.subscribe("hive.agent.*.*", cb=echo)
    await nc.subscribe("hive.admin.>", cb=echo)
    await nc.subscribe("hive.system.>", cb=echo)
    await nc.jetstream().create_key_value(bucket=subjects.STATE_BUCKET)
    await sync_subscriptions(nc)
    await asyncio.sleep(0.3)  # the hub tells the leaf of its interest
    try:
        yield nc
    finally:
        await nc.close()


async def ask(nc: nats.NATS, subject: str) -> str:
    try:
        return (await nc.request(subject, b"{}", timeout=1)).data.decode()
    except nats.errors.NoRespondersError:
        return "no responders"
    except nats.errors.TimeoutError:
        return "timeout"


async def test_the_links_user_confines_what_the_leaf_reaches(bus):
    async with echo_service(bus):
        la = await bus.connect("la")
        evil = await bus.connect("evil")
        try:
            assert await ask(la, "hive.agent.la.send") == "echo hive.agent.la.send"
            # a KV put from a leaf client lands in the hub's JetStream
            ack = await ask(la, subjects.kv_subject(subjects.heartbeat_key("la")))
            assert '"stream":"KV_hive_state"' in ack
            # every local permission on the leaf, but not beyond the link's
            for subject in (
                "hive.admin.lifecycle.list",
                "hive.system.lifecycle.create",
                "hive.agent.lb.send",
                "$JS.API.STREAM.DELETE.KV_hive_state",
            ):
                assert await ask(evil, subject) == "no responders", subject
        finally:
            await la.close()
            await evil.close()


async def test_a_reload_neither_changes_nor_revokes_a_connected_link(bus):
    async with echo_service(bus):
        la = await bus.connect("la")
        try:
            # lb placed on n1: the link's user gets its subjects, the hub reloads
            bus.link_agents = ["la", "lb"]
            bus.write_hub()
            bus.hub.reload()
            bus.write_leaf(["la", "lb"])
            bus.leaf.reload()
            lb = await bus.connect("lb")
            assert await ask(lb, "hive.agent.lb.send") == "no responders"
            await lb.close()
            # the node is revoked: its link's user removed, the hub reloads
            bus.link_agents = None
            bus.write_hub()
            bus.hub.reload()
            await asyncio.sleep(1)
            assert await ask(la, "hive.agent.la.send") == "echo hive.agent.la.send"
            assert bus.links_made() == 1
        finally:
            await la.close()
