"""Joining a machine as a node: ``hive join-token``, ``hive node --join``, the
hub's join handler, and what the credentials it hands out may reach.

Everything runs against a real nats-server (the session's); the join handler
is mounted on a real Responder as the control half mounts it, with the
test's own registry standing in for ``lifecycle.nodes``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest

from hyperhive.cli.embedded import EmbeddedNats, free_port
from hyperhive.common import nats_auth, rpc, subjects
from hyperhive.common.config import Settings, load_settings
from hyperhive.common.errors import BadRequest, Conflict, Forbidden, HiveError, Unavailable
from hyperhive.common.jetstream import ensure_state_bucket
from hyperhive.common.names import check_agent_name
from hyperhive.common.natsconn import sync_subscriptions
from hyperhive.common.wire.join import (
    JoinReply,
    JoinRequest,
    JoinToken,
    JoinTokenRequest,
    join_proof,
)
from hyperhive.common.wire.lifecycle import AgentInfo, SpawnRequest
from hyperhive.lifecycle.join import Joins, remove_node
from tests import rig
from tests.cli import test_up
from tests.lifecycle.conftest import lifecycle_settings


class Registry:
    """The test's stand-in for the control half's node table."""

    def __init__(self) -> None:
        self.nodes: dict[str, JoinRequest] = {}

    async def register(self, req: JoinRequest) -> None:
        if req.name in self.nodes:
            raise Conflict(f"node {req.name} exists")
        self.nodes[req.name] = req


def hub_settings(nats_server: EmbeddedNats, home: Path) -> Settings:
    return rig.make_settings(nats_server, "postgresql://unused@/none", home)


@contextlib.asynccontextmanager
async def serving_joins(
    nats_server: EmbeddedNats, home: Path
) -> AsyncIterator[tuple[Joins, Registry]]:
    """The join handler served on the hub's NATS with the services' credentials."""
    registry = Registry()
    joins = Joins(hub_settings(nats_server, home), registry.register)
    nc = await rig.connect_as(nats_server, nats_server.service_seed)
    responder = rpc.Responder(nc, "lifecycle")
    await joins.serve(responder)
    await sync_subscriptions(nc)
    try:
        yield joins, registry
    finally:
        await responder.stop()
        await nc.close()


class Conn:
    """A NATS connection that records the server's refusals."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.closed = asyncio.Event()  # the server closed the connection

    async def open(self, url: str, seed: bytes | str, inbox_prefix: str) -> nats.NATS:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        async def on_closed() -> None:
            self.closed.set()

        seed_str = seed.decode() if isinstance(seed, bytes) else seed
        deadline = time.monotonic() + 10  # the server may still be applying its reload
        while time.monotonic() < deadline:
            try:
                self.nc = await nats.connect(
                    url,
                    nkeys_seed_str=seed_str,
                    inbox_prefix=inbox_prefix,
                    error_cb=on_error,
                    closed_cb=on_closed,
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=3,
                )
                return self.nc
            except (nats.errors.Error, OSError):
                # a reload in progress may also reset the socket mid-handshake
                await asyncio.sleep(0.1)
        raise AssertionError("the hub never accepted the seed")

    def refused(self, subject: str) -> bool:
        return any(
            "permissions violation" in e.lower() and subject.lower() in e.lower()
            for e in self.errors
        )


def signed(token: JoinToken, name: str, node_key: str, signer: bytes | None = None) -> JoinRequest:
    seed = signer or token.token.encode()
    proof = join_proof(name, node_key, token.public_key)
    return JoinRequest(
        name=name,
        node_key=node_key,
        token_key=token.public_key,
        signature=base64.b64encode(nats_auth.sign(seed, proof)).decode(),
    )


def hive(home: Path, nats_server: EmbeddedNats, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env["HIVE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "hyperhive.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_machine_joins_with_one_command(nats_server, tmp_path):
    async with serving_joins(nats_server, tmp_path / "hub") as (_joins, registry):
        # the operator's command on the hub
        op_home = tmp_path / "operator"
        op_home.mkdir()
        (op_home / "hive.toml").write_text(
            f'[nats]\nurl = "{nats_server.url}"\nseed_file = "{nats_server.operator_seed}"\n'
        )
        made = await asyncio.to_thread(hive, op_home, nats_server, "join-token", "--json")
        assert made.returncode == 0, made.stderr
        shown = json.loads(made.stdout)
        token = JoinToken(
            token=shown["token"],
            public_key=nats_auth.public_key(shown["token"].encode()),
            user=shown["user"],
            expires_at=shown["expires_at"],
        )
        assert token.token.startswith("SU") and token.user.startswith("join-")
        assert 590 < token.expires_at - time.time() <= 600
        node_home = tmp_path / "node1-home"
        proc = await asyncio.to_thread(
            hive,
            node_home,
            nats_server,
            "node",
            "--join",
            nats_server.url,
            "--token",
            token.token,
            "--name",
            "n1",
            "--join-only",
        )
        assert proc.returncode == 0, proc.stderr
        assert "as node n1" in proc.stdout
        assert set(registry.nodes) == {"n1"}

        # the node's seed stayed on the node, readable by its owner only; the
        # hub knows only its public key
        seed = (node_home / "node.seed").read_bytes().strip()
        assert stat.S_IMODE((node_home / "node.seed").stat().st_mode) == 0o600
        assert registry.nodes["n1"].node_key == nats_auth.public_key(seed)
        assert seed.decode() not in (nats_server.root / "auth.conf").read_text()
        settings = load_settings({"HIVE_HOME": str(node_home)})
        assert settings.nats.url == nats_server.url
        assert settings.nats.seed_file == str(node_home / "node.seed")
        assert settings.nats.inbox_prefix == "_INBOX.node-n1"

        # the node agent answers the control half's requests for its node and
        # writes its heartbeat key in the hub's JetStream
        node = Conn()
        nc = await node.open(nats_server.url, seed, settings.nats.inbox_prefix)

        async def state(msg) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(b'{"node":"n1"}')

        await nc.subscribe("hive.node.n1.>", cb=state)
        await sync_subscriptions(nc)
        svc = await rig.connect_as(nats_server, nats_server.service_seed)
        await ensure_state_bucket(svc.jetstream())
        try:
            reply = await svc.request("hive.node.n1.state", b"{}", timeout=5)
            assert reply.data == b'{"node":"n1"}'
            ack = await nc.request(subjects.kv_subject("node.n1"), b"{}", timeout=5)
            assert b'"stream":"KV_hive_state"' in ack.data
        finally:
            await svc.close()
            await nc.close()
        assert node.errors == []

        # the token was spent: its user is gone from the hub soon after
        await rig.eventually(
            lambda: token.user not in {u.name for u in nats_auth.list_users(nats_server.root)},
            what="the spent token's user removed",
        )
        again = await asyncio.to_thread(
            hive,
            tmp_path / "other",
            nats_server,
            "node",
            "--join",
            nats_server.url,
            "--token",
            token.token,
            "--name",
            "n9",
            "--join-only",
        )
        assert again.returncode == 1
        assert "refused" in again.stderr or "already used" in again.stderr
        assert "n9" not in registry.nodes


async def test_the_lifecycle_service_serves_the_join(nats_server, database_url, tmp_path):
    # the control half as `hive up` runs it: the operator's command and the
    # new machine's command, each a real `hive` process
    settings = lifecycle_settings(nats_server, database_url, tmp_path / "hub")
    async with rig.running_service("lifecycle", settings):
        op_home = tmp_path / "operator"
        op_home.mkdir()
        (op_home / "hive.toml").write_text(
            f'[nats]\nurl = "{nats_server.url}"\nseed_file = "{nats_server.operator_seed}"\n'
        )
        made = await asyncio.to_thread(hive, op_home, nats_server, "join-token")
        assert made.returncode == 0, made.stderr
        command = next(line for line in made.stdout.splitlines() if "hive node --join" in line)
        argv = [*command.split()[1:], "--name", "lc1", "--join-only"]
        joined = await asyncio.to_thread(hive, tmp_path / "lc1", nats_server, *argv)
        assert joined.returncode == 0, joined.stderr
        users = {u.name for u in nats_auth.list_users(nats_server.root)}
        assert "node-lc1" in users
        # joined, but no node agent runs there yet: nothing is placed on it
        op = await rig.connect_as(nats_server, nats_server.operator_seed, "_INBOX.operator")
        try:
            with pytest.raises(Unavailable, match="node lc1 has joined but its node agent"):
                await rpc.request(
                    op,
                    subjects.admin("lifecycle", "spawn"),
                    SpawnRequest(name="onlc1", host="lc1"),
                    AgentInfo,
                    timeout=30,
                )
        finally:
            await op.close()
    nats_auth.remove_user(nats_server.root, "node-lc1")


async def test_a_token_is_single_use_and_expires(nats_server, tmp_path):
    async with serving_joins(nats_server, tmp_path / "hub") as (joins, registry):
        token = await joins.issue(JoinTokenRequest(ttl_s=600))
        key = nats_auth.public_key(nats_auth.new_seed())
        await joins.join(signed(token, "s1", key))
        with pytest.raises(Forbidden, match="already used"):
            await joins.join(signed(token, "s2", key))
        assert set(registry.nodes) == {"s1"}

        short = await joins.issue(JoinTokenRequest(ttl_s=0.3))
        await asyncio.sleep(0.5)
        with pytest.raises(Forbidden, match="expired"):
            await joins.join(signed(short, "s3", key))
        assert short.user not in {u.name for u in nats_auth.list_users(nats_server.root)}
        # an expired token nobody tried is swept with its user
        idle = await joins.issue(JoinTokenRequest(ttl_s=0.3))
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(joins.sweep) >= 1
        assert idle.user not in {u.name for u in nats_auth.list_users(nats_server.root)}


async def test_only_the_tokens_holder_can_spend_it(nats_server, tmp_path):
    async with serving_joins(nats_server, tmp_path / "hub") as (joins, registry):
        token = await joins.issue(JoinTokenRequest(ttl_s=600))
        key = nats_auth.public_key(nats_auth.new_seed())
        # someone who knows the token's id but not its seed
        with pytest.raises(Forbidden, match="not signed"):
            await joins.join(signed(token, "f1", key, signer=nats_auth.new_seed()))
        # a taken name: refused, the token kept for another try
        registry.nodes["taken"] = signed(token, "taken", key)
        with pytest.raises(Conflict):
            await joins.join(signed(token, "taken", key))
        for bad in (
            msgspec.structs.replace(signed(token, "Bad.Name", key)),
            signed(token, "node1", token.token),  # a seed, not a public key
            msgspec.structs.replace(signed(token, "f2", key), signature="%%%"),
        ):
            with pytest.raises(BadRequest):
                await joins.join(bad)
        # the hub's own node: a machine under its name would read its requests
        with pytest.raises(Conflict, match="hub's own"):
            await joins.join(signed(token, "hub", key))
        reply = await joins.join(signed(token, "f3", key))
        assert reply == JoinReply(node="f3", user="node-f3", inbox_prefix="_INBOX.node-f3")
        # a second join under an existing node's name is refused even if the
        # control half forgot it: the node's user is not replaced
        registry.nodes.clear()
        other = await joins.issue(JoinTokenRequest(ttl_s=600))
        with pytest.raises(Conflict, match="already joined"):
            await joins.join(signed(other, "f3", nats_auth.public_key(nats_auth.new_seed())))


async def test_a_removed_node_is_cut_off_at_the_reload(nats_server, tmp_path):
    # what a leaf link does not do (tests/common/test_leaf.py): the node's
    # live connection is closed when its user goes, and it cannot come back
    async with serving_joins(nats_server, tmp_path / "hub") as (joins, _registry):
        seed = nats_auth.new_seed()
        token = await joins.issue(JoinTokenRequest(ttl_s=600))
        await joins.join(signed(token, "gone1", nats_auth.public_key(seed)))
        node = Conn()
        nc = await node.open(nats_server.url, seed, "_INBOX.node-gone1")
        assert not nc.is_closed
        await asyncio.to_thread(remove_node, hub_settings(nats_server, tmp_path / "hub"), "gone1")
        await asyncio.wait_for(node.closed.wait(), 10)
        with pytest.raises(nats.errors.Error):
            await nats.connect(
                nats_server.url,
                nkeys_seed_str=seed.decode(),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
                error_cb=_quiet,
            )


async def _quiet(_exc: Exception) -> None:
    """The refusal is what the test expects."""


async def test_a_seen_token_reaches_nothing_but_the_join_subject(nats_server, tmp_path):
    async with serving_joins(nats_server, tmp_path / "hub") as (joins, _registry):
        token = await joins.issue(JoinTokenRequest(ttl_s=600))
        thief = Conn()
        nc = await thief.open(nats_server.url, token.token, subjects.inbox_prefix(token.user))
        try:
            for subject in (
                "hive.agent.hm1nd.send",
                "hive.admin.lifecycle.list",
                "hive.system.lifecycle.create",
                "$JS.API.STREAM.LIST",
                subjects.kv_subject("node.x"),
            ):
                with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                    await nc.request(subject, b"{}", timeout=0.5)
            await nc.subscribe("_INBOX.>")
            await nc.subscribe("hive.>")
            await nc.flush()
            await rig.eventually(
                lambda: (
                    thief.refused("hive.admin.lifecycle.list")
                    and thief.refused("$JS.API.STREAM.LIST")
                    and thief.refused("_INBOX.>")
                    and thief.refused("hive.>")
                ),
                what="every probe refused",
            )
        finally:
            await nc.close()


async def test_a_node_credential_reaches_only_its_own_node(nats_server, tmp_path):
    async with serving_joins(nats_server, tmp_path / "hub") as (joins, _registry):
        seeds = {}
        for name in ("p1", "p2"):
            seeds[name] = nats_auth.new_seed()
            token = await joins.issue(JoinTokenRequest(ttl_s=600))
            await joins.join(signed(token, name, nats_auth.public_key(seeds[name])))
        # an agent on each node, with a key its node made (as the control half
        # installs it on the hub)
        agent_seeds = {"pa": nats_auth.new_seed(), "pb": nats_auth.new_seed()}
        for agent, seed in agent_seeds.items():
            nats_auth.put_user(
                nats_server.root, nats_auth.agent_user(agent, nats_auth.public_key(seed))
            )
        nats_auth.render_auth_file(nats_server.root, nats_server.auth_file)
        await asyncio.to_thread(rig.reload_nats, nats_server)

        svc = await rig.connect_as(nats_server, nats_server.service_seed)
        seen: list[str] = []

        async def record(msg) -> None:  # type: ignore[no-untyped-def]
            if not msg.subject.startswith("hive.node.p1."):
                seen.append(msg.subject)

        await svc.subscribe("hive.>", cb=record)
        await sync_subscriptions(svc)
        p1, pa = Conn(), Conn()
        nc1 = await p1.open(nats_server.url, seeds["p1"], "_INBOX.node-p1")
        nca = await pa.open(nats_server.url, agent_seeds["pa"], "_INBOX.pa")
        try:
            # a compromised node p1: no other node's requests, no agent's or
            # service's subjects, no JetStream beyond its own heartbeat key
            for subject in ("hive.node.p2.>", "hive.node.*.create", "_INBOX.>", "hive.agent.>"):
                await nc1.subscribe(subject)
            for subject in (
                "hive.agent.pb.send",
                "hive.agent.pa.send",
                "hive.admin.lifecycle.destroy",
                "hive.system.lifecycle.create",
                "hive.events.node.joined",
                "$JS.API.STREAM.DELETE.HIVE_EVENTS",
                subjects.kv_subject("node.p2"),
                subjects.kv_subject("heartbeat.pb"),
                "_INBOX.operator.forged",
            ):
                await nc1.publish(subject, b"{}")
            # an agent on node p1 speaking as the agent on p2, or as the operator
            for subject in ("hive.agent.pb.send", "hive.admin.lifecycle.list", "hive.system.x.y"):
                await nca.publish(subject, b"{}")
            await nca.publish("hive.agent.pa.send", b"{}")
            await nc1.flush()
            await nca.flush()
            await rig.eventually(
                lambda: (
                    all(
                        p1.refused(s)
                        for s in (
                            "hive.node.p2.>",
                            "_INBOX.>",
                            "hive.agent.pb.send",
                            "hive.admin.lifecycle.destroy",
                            "$JS.API.STREAM.DELETE.HIVE_EVENTS",
                            "$KV.hive_state.node.p2",
                            "_INBOX.operator.forged",
                        )
                    )
                    and pa.refused("hive.agent.pb.send")
                    and pa.refused("hive.admin.lifecycle.list")
                    and "hive.agent.pa.send" in seen
                ),
                what="every cross-node probe refused",
            )
            assert [s for s in seen if s != "hive.agent.pa.send"] == []
            # what it may do: answer a request made to its node, once
            got = []

            async def answer(msg) -> None:  # type: ignore[no-untyped-def]
                got.append(msg.subject)
                await msg.respond(b'{"ok":true}')

            await nc1.subscribe("hive.node.p1.>", cb=answer)
            await sync_subscriptions(nc1)
            reply = await svc.request("hive.node.p1.state", b"{}", timeout=5)
            assert reply.data == b'{"ok":true}'
        finally:
            await nc1.close()
            await nca.close()
            await svc.close()
            for agent in agent_seeds:
                nats_auth.remove_user(nats_server.root, f"agent-{agent}")
            nats_auth.render_auth_file(nats_server.root, nats_server.auth_file)
            await asyncio.to_thread(rig.reload_nats, nats_server)


def test_agent_names_cannot_take_a_node_agents_inbox():
    with pytest.raises(HiveError, match="reserved"):
        check_agent_name("node-n1")
    assert check_agent_name("nodes") == "nodes"


def _outward_address() -> str | None:
    """An address of this machine other than loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_the_hubs_nats_listens_where_nodes_reach_it(tmp_path):
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    for host, reachable in (("127.0.0.1", False), ("0.0.0.0", True)):
        server = EmbeddedNats(tmp_path / host, free_port(), host)  # as `hive up --nats-host`
        server.start()
        try:
            assert server.url.startswith("nats://127.0.0.1:")  # local clients
            conn = Conn()
            if reachable:
                nc = await conn.open(
                    f"nats://{address}:{server.port}", server.service_seed.read_bytes().strip(), ""
                )
                await nc.close()
            else:
                # (nats-py never gives up on a refused port without reconnects)
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((address, server.port), timeout=2).close()
        finally:
            server.stop()


@pytest.mark.slow
def test_hive_up_for_nodes_and_a_machine_joining_it(tmp_path):
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    home = tmp_path / "hub"
    env = test_up._up_env(home)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hyperhive.cli.main",
            *test_up._up_args("--nats-port", str(port), "--nats-host", "0.0.0.0"),
            "--no-agents",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = test_up._printed_lines(proc)
        assert f"  nodes      NATS on 0.0.0.0:{port}; `hive join-token` to add one" in lines
        test_up._wait_status(env, proc)
        made = rig.hive_run("join-token", "--json", env=env)
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)["token"]
        node_home = tmp_path / "machine2"
        joined = rig.hive_run(
            "node",
            "--join",
            f"nats://{address}:{port}",
            "--token",
            token,
            "--name",
            "m2",
            "--join-only",
            "--home",
            str(node_home),
            env={k: v for k, v in env.items() if k != "HIVE_HOME"},
        )
        assert joined.returncode == 0, joined.stderr
        users = {u.name for u in nats_auth.list_users(home / "nats")}
        assert "node-m2" in users
        assert (node_home / "hive.toml").read_text().count(f"nats://{address}:{port}") == 1
    finally:
        code, out = test_up._stop_up(proc)
    assert code == 0, out
