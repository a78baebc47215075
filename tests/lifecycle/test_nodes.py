"""A hive across hosts, on one machine: the hub's services and two node
agents (``hive serve node``) as separate processes, each with its own
``$HIVE_HOME`` and its own NATS user, no database, the process backend.

The harness is a stand-in that takes its messages from the broker
(``recv_harness.py``), so a message's delivery is seen in the agent's state
dir on its node.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats.errors
import pytest

from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import retry, rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.paths import AgentPaths
from hyperhive.common.service import hyperhive_version
from hyperhive.common.wire.broker import AdminSendRequest, MessageStatus, SendReply, StatusRequest
from hyperhive.common.wire.events import HiveEvent
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import serving

HARNESS = f"{sys.executable} {Path(__file__).with_name('recv_harness.py')}"
LOST_AFTER_S = 3.0
CRASH_BOUND_S = 2.0  # crash-watch's promise, on any node


def hub_settings(nats: EmbeddedNats, database_url: str, home: Path) -> Settings:
    return lifecycle_settings(
        nats,
        database_url,
        home,
        HIVE_LIFECYCLE_MANAGER="hm1nd",
        HIVE_LIFECYCLE_HARNESS_COMMAND=HARNESS,
        HIVE_NODE_HEARTBEAT_INTERVAL_S="0.5",
        HIVE_NODE_LOST_AFTER_S=str(LOST_AFTER_S),
        HIVE_CRASHWATCH_POLL_INTERVAL_S="0.5",
    )


def node_settings(nats: EmbeddedNats, home: Path, node: str, seed: Path) -> Settings:
    """A node: its NATS user, its own data dir, and no database at all."""
    return rig.make_settings(
        nats,
        "postgresql://nobody@127.0.0.1:1/none",
        home,
        HIVE_NODE_NAME=node,
        HIVE_NODE_HEARTBEAT_INTERVAL_S="0.5",
        HIVE_NATS_SEED_FILE=str(seed),
        HIVE_NATS_INBOX_PREFIX=subjects.inbox_prefix(f"node-{node}"),
        HIVE_NATS_AUTH_FILE="",
        HIVE_NATS_RELOAD_PID_FILE="",
        HIVE_LIFECYCLE_HARNESS_COMMAND=HARNESS,
        HIVE_LIFECYCLE_MONITOR_INTERVAL_S="0.2",
        HIVE_LIFECYCLE_START_GRACE_S="0.3",
        HIVE_LIFECYCLE_STOP_TIMEOUT_S="5",
    )


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[dict[str, Path]]:
    out = {n: tmp_path / n for n in ("node1", "node2")}
    for home in out.values():
        home.mkdir()
    yield out
    for home in out.values():
        rig.stop_harnesses(home / "agents", timeout=10.0)


def received(home: Path, agent: str) -> list[list[str]]:
    path = AgentPaths(home / "agents" / agent).state / "received.txt"
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines()]


def harness_pid(home: Path, agent: str) -> int:
    return int(AgentPaths(home / "agents" / agent).pid_file.read_text().split()[0])


async def cli_json(settings: Settings, *args: str) -> list[dict[str, object]]:
    code, out, err = await rig.hive_cli(settings, *args, "--json")
    assert code == 0, err
    data = json.loads(out)
    return data if isinstance(data, list) else [data]


async def by_name(settings: Settings, *args: str) -> dict[str, dict[str, object]]:
    return {str(x["name"]): x for x in await cli_json(settings, *args)}


@pytest.mark.slow
async def test_agents_on_two_nodes_lost_and_back(
    nats_server, database_url, hive_home, homes, operator_nc
):
    hub = hub_settings(nats_server, database_url, hive_home)
    op = rig.operator_settings(hub, nats_server)
    nodes = {
        n: node_settings(nats_server, homes[n], n, rig.add_node_user(nats_server, n)) for n in homes
    }
    procs: dict[str, rig.ServiceProcess] = {}
    crashes: list[tuple[float, HiveEvent]] = []

    async def on_crash(msg) -> None:  # type: ignore[no-untyped-def]
        crashes.append((time.monotonic(), msgspec.json.decode(msg.data, type=HiveEvent)))

    sub = await operator_nc.subscribe(subjects.event(subjects.EV_CRASH), cb=on_crash)
    try:
        async with (
            serving("broker", hub, operator_nc),
            serving("lifecycle", hub, operator_nc),
            serving("crash-watch", hub, operator_nc),
        ):
            for n, s in nodes.items():
                procs[n] = rig.start_service_process("node", s, homes[n])

            async def all_up() -> dict[str, dict[str, object]] | None:
                found = await by_name(op, "nodes")
                up = {n for n, x in found.items() if x["state"] == "up"}
                return found if {"hub", "node1", "node2"} <= up else None

            await rig.eventually(all_up, timeout=30, what="hub, node1, node2 up")

            # placement: --host, then the up node with the fewest running agents
            for name, host in (("a1", "node1"), ("a2", "node2")):
                code, out, err = await rig.hive_cli(op, "spawn", name, "--host", host, "--json")
                assert code == 0, err
                assert json.loads(out)["node"] == host
            code, _, err = await rig.hive_cli(op, "spawn", "a0", "--json")  # all tie: the hub
            assert code == 0, err
            code, _, err = await rig.hive_cli(op, "spawn", "a3", "--json")  # hub has 2 now
            assert code == 0, err
            agents = await by_name(op, "agents")
            assert {n: a["node"] for n, a in agents.items()} == {
                "hm1nd": "hub",
                "a0": "hub",
                "a1": "node1",
                "a2": "node2",
                "a3": "node1",
            }
            assert all(a["state"] == "running" for a in agents.values())
            code, table, _ = await rig.hive_cli(op, "agents")
            assert "node1" in table and "node2" in table
            listed = await rig.eventually(all_up, timeout=10, what="nodes listed")
            assert listed["node1"]["agents"] == 2 and listed["node2"]["agents"] == 1
            assert listed["node1"]["revision"] == hyperhive_version()  # what the node runs

            # the agent's files live on its node; the hub keeps the repos
            a1_node = AgentPaths(homes["node1"] / "agents" / "a1")
            assert (a1_node.applied / "agent.toml").is_file()
            assert not (a1_node.applied / ".git").exists()
            assert a1_node.nats_seed.is_file() and a1_node.state.is_dir()
            assert (AgentPaths.of(hub, "a1").proposed / ".git").is_dir()

            # a message to an agent on a node reaches it
            await send(operator_nc, "a2", "hello a2")
            await rig.eventually(
                lambda: any(r[2] == "hello a2" for r in received(homes["node2"], "a2")),
                timeout=20,
                what="a2 got its message",
            )

            # a crash on a node is reported within crash-watch's bound
            killed_at = time.monotonic()
            os.kill(harness_pid(homes["node2"], "a2"), signal.SIGKILL)
            await rig.eventually(
                lambda: [c for c in crashes if c[1].agent == "a2"], timeout=10, what="crash"
            )
            seen_after = next(t for t, c in crashes if c.agent == "a2") - killed_at
            print(f"crash on node2 reported after {seen_after:.2f}s")
            assert seen_after < CRASH_BOUND_S
            code, _, err = await rig.hive_cli(op, "start", "a2")
            assert code == 0, err

            # node2's agent dies alone and comes back before it is lost: its
            # running harness is adopted, not started twice
            a2_pid = harness_pid(homes["node2"], "a2")
            procs["node2"].stop(signal.SIGKILL)
            restarted_at = time.time()
            procs["node2"] = rig.start_service_process("node", nodes["node2"], homes["node2"])

            async def node2_beats_again() -> bool:
                found = await all_up()  # (if it took long enough to be lost: back)
                seen = found["node2"]["last_seen"] if found else None
                return isinstance(seen, float) and seen > restarted_at

            await rig.eventually(node2_beats_again, timeout=30, what="node2 answers again")
            assert harness_pid(homes["node2"], "a2") == a2_pid and rig.pid_alive(a2_pid)
            crashes_before = len(crashes)
            os.kill(a2_pid, signal.SIGKILL)  # still watched by the new node agent
            await rig.eventually(
                lambda: len(crashes) > crashes_before, timeout=10, what="crash after adoption"
            )

            # node1 is killed with its agents: lost once, messages held
            pids = [harness_pid(homes["node1"], n) for n in ("a1", "a3")]
            procs["node1"].stop(signal.SIGKILL)
            for pid in pids:
                os.killpg(pid, signal.SIGKILL)
            manager_home = hive_home

            def events_of(kind: str, node: str = "node1") -> list[list[str]]:
                return [
                    r
                    for r in received(manager_home, "hm1nd")
                    if r[1] == kind and r[2].startswith(f"node {node} ")
                ]

            lost = await rig.eventually(
                lambda: events_of("NodeLost"), timeout=LOST_AFTER_S + 15, what="NodeLost"
            )
            assert "a1" in lost[0][2] and "a3" in lost[0][2] and "a2" not in lost[0][2]
            nodes_now = await by_name(op, "nodes")
            assert nodes_now["node1"]["state"] == "lost"
            assert nodes_now["node2"]["state"] == "up"
            agents = await by_name(op, "agents")
            assert agents["a1"]["node_state"] == "lost" and agents["a2"]["node_state"] == "up"
            sent = await send(operator_nc, "a1", "wait for me")
            await asyncio.sleep(1.5)  # time for a wrong delivery to happen, if it would
            status = await rpc.request(
                operator_nc,
                subjects.admin("broker", "status"),
                StatusRequest(id=sent.id),
                MessageStatus,
            )
            assert status.delivered_at is None, "a message to a lost node's agent is held"

            # node1 returns: its agents are started again (not duplicated),
            # the held message is delivered, NodeBack follows
            procs["node1"] = rig.start_service_process("node", nodes["node1"], homes["node1"])
            await rig.eventually(
                lambda: any(r[2] == "wait for me" for r in received(homes["node1"], "a1")),
                timeout=30,
                what="the held message delivered after node1 is back",
            )
            back = await rig.eventually(lambda: events_of("NodeBack"), timeout=15, what="back")
            assert "a1" in back[0][2] and "a3" in back[0][2]
            assert len(events_of("NodeLost")) == 1
            agents = await by_name(op, "agents")
            assert agents["a1"]["state"] == "running" and agents["a1"]["node_state"] == "up"
            assert len(received(homes["node1"], "a1")) == 1
            assert not [c for c in crashes if c[1].agent in ("a1", "a3")], (
                "a lost node's agents are no crash"
            )
            log_lines = [str(e["text"]) for e in await cli_json(op, "log", "--kind", "node")]
            assert any(t.startswith("node node1 lost") for t in log_lines), log_lines
            assert any(t.startswith("node node1 back") for t in log_lines), log_lines
            assert any(t == "node node2 joined the hive" for t in log_lines), log_lines
            for name in ("a1", "a2", "a3", "a0"):
                code, _, err = await rig.hive_cli(op, "destroy", name)
                assert code == 0, err
            assert not (homes["node1"] / "agents" / "a1" / "run").exists()
    finally:
        await sub.unsubscribe()
        for proc in procs.values():
            proc.stop(signal.SIGKILL)
        rig.cleanup_agents(nats_server, hub.paths.agents_dir)


async def send(nc, to: str, body: str) -> SendReply:  # type: ignore[no-untyped-def]
    return await rpc.request(
        nc, subjects.admin("broker", "send"), AdminSendRequest(to=to, body=body), SendReply
    )


async def test_a_node_user_reaches_only_its_own_subjects(nats_server, service_nc):
    """``node-<node>`` hears its own verbs and answers them, writes its own
    heartbeat key, and nothing else: not another node's verbs, not an
    agent's subjects, not a service's."""
    seed = rig.add_node_user(nats_server, "nperm")
    nc = await rig.connect_as(nats_server, seed, subjects.inbox_prefix("node-nperm"))
    heard: list[str] = []
    try:

        async def echo(msg) -> None:  # type: ignore[no-untyped-def]
            heard.append(msg.subject)
            if msg.reply:
                await msg.respond(b"{}")

        for subject in (
            subjects.node("nperm", "state"),
            subjects.node("other", "state"),
            subjects.agent("a1", subjects.AGENT_SEND),
            subjects.system("lifecycle", "list"),
        ):
            await nc.subscribe(subject, cb=echo)
        await nc.flush()
        # nats-server 2.15 may answer "no responders" for a few ms after a
        # SUB on another connection: retried as hyperhive's own requests are
        reply = await retry.retry(
            lambda: service_nc.request(subjects.node("nperm", "state"), b"{}", timeout=5),
            retry.NO_RESPONDERS,
            on=(nats.errors.NoRespondersError,),
            tries=retry.NO_RESPONDERS_TRIES,
        )
        assert reply.data == b"{}"  # its own verb, answered
        for subject in (
            subjects.node("other", "state"),
            subjects.agent("a1", subjects.AGENT_SEND),
            subjects.system("lifecycle", "list"),
        ):
            await service_nc.publish(subject, b"{}")
        got: list[str] = []

        async def on_service_side(msg) -> None:  # type: ignore[no-untyped-def]
            got.append(msg.subject)

        for subject in (
            subjects.kv_subject(subjects.node_key("nperm")),
            subjects.kv_subject(subjects.node_key("other")),
            subjects.agent("a1", subjects.AGENT_SEND),
            subjects.system("broker", "deliver"),
        ):
            await service_nc.subscribe(subject, cb=on_service_side)
        await service_nc.flush()
        own = subjects.kv_subject(subjects.node_key("nperm"))

        async def own_key_heard() -> bool:
            # nats-server 2.15 may not route to a SUB of another connection
            # for a few ms after it was made: published again until heard
            if own not in got:
                await nc.publish(own, b"{}")
                await nc.flush()
            return own in got

        await rig.eventually(own_key_heard, timeout=5, what="its own heartbeat key")
        # now that the service's subscriptions are live, what is not the
        # node's own goes nowhere (its own, published last, fences the rest)
        got.clear()
        for subject in (
            subjects.kv_subject(subjects.node_key("other")),
            subjects.agent("a1", subjects.AGENT_SEND),
            subjects.system("broker", "deliver"),
            own,
        ):
            await nc.publish(subject, b"{}")
        await nc.flush()
        await rig.eventually(lambda: got, timeout=5, what="its own heartbeat key again")
        await service_nc.flush()
        assert got == [own]
        assert heard == [subjects.node("nperm", "state")]
    finally:
        await nc.close()


@pytest.mark.slow
async def test_notes_and_kept_state_are_read_on_the_agents_node(
    nats_server, database_url, hive_home, homes, operator_nc
):
    """An agent's state dir lives on its node: ``hive notes`` and ``hive
    kept`` on the hub read it there (through the node agent), also after the
    agent is destroyed; a lost node is an error that names it."""
    hub = hub_settings(nats_server, database_url, hive_home)
    op = rig.operator_settings(hub, nats_server)
    node1 = node_settings(
        nats_server, homes["node1"], "node1", rig.add_node_user(nats_server, "node1")
    )
    proc: rig.ServiceProcess | None = None
    try:
        async with (
            serving("broker", hub, operator_nc),
            serving("lifecycle", hub, operator_nc),
        ):
            proc = rig.start_service_process("node", node1, homes["node1"])

            async def node1_up() -> bool:
                found = await by_name(op, "nodes")
                return found.get("node1", {}).get("state") == "up"

            await rig.eventually(node1_up, timeout=30, what="node1 up")
            code, out, err = await rig.hive_cli(op, "spawn", "n1", "--host", "node1", "--json")
            assert code == 0, err
            assert json.loads(out)["node"] == "node1"

            # its agent writes its notes twice, on node1
            for text in ("# first", "# second"):
                await send(operator_nc, "n1", f"notes: {text}")
            on_node = AgentPaths(homes["node1"] / "agents" / "n1").state
            await rig.eventually(
                lambda: (
                    (on_node / "notes.md").is_file()
                    and (on_node / "notes.md").read_text() == "# second"
                ),
                timeout=20,
                what="n1 wrote its notes on node1",
            )
            assert not (AgentPaths.of(hub, "n1").state / "notes.md").exists()

            async def shown_on_hub() -> None:
                code, out, err = await rig.hive_cli(op, "notes", "n1")
                assert code == 0, err
                assert out == "# second\n"
                code, out, err = await rig.hive_cli(op, "notes", "n1", "--history", "--json")
                assert code == 0, err
                versions = json.loads(out)["versions"]
                assert [(v["v"], v["kind"], v["bytes"]) for v in versions] == [
                    (1, "change", 7),
                    (2, "change", 8),
                ]
                code, table, err = await rig.hive_cli(op, "notes", "n1", "--history")
                assert code == 0 and "change" in table, err
                code, out, err = await rig.hive_cli(op, "notes", "n1", "--version", "1")
                assert code == 0 and out == "# first\n", err

            await shown_on_hub()

            # destroyed: the state is kept on node1, listed with its host
            code, out, err = await rig.hive_cli(op, "destroy", "n1")
            assert code == 0 and "state kept" in out, err
            assert (on_node / "notes.md").is_file()
            kept = await by_name(op, "kept")
            assert kept["n1"]["node"] == "node1"
            assert int(kept["n1"]["bytes"]) >= len("# first") + len("# second")
            code, table, err = await rig.hive_cli(op, "kept")
            assert code == 0 and "node1" in table, err
            await shown_on_hub()  # a kept state's notes too

            # node1 lost: not an empty answer, an error naming the node
            proc.stop(signal.SIGKILL)

            async def node1_lost() -> bool:
                return (await by_name(op, "nodes"))["node1"]["state"] == "lost"

            await rig.eventually(node1_lost, timeout=LOST_AFTER_S + 15, what="node1 lost")
            for args in (("notes", "n1"), ("notes", "n1", "--history"), ("kept",)):
                code, out, err = await rig.hive_cli(op, *args)
                assert code != 0 and out == "", (args, out)
                assert "node node1 is lost" in err, (args, err)
    finally:
        if proc is not None:
            proc.stop(signal.SIGKILL)
        rig.cleanup_agents(nats_server, hub.paths.agents_dir)
