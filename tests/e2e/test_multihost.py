"""A hive across three hosts on one machine, with the real harness and the
real claude CLI (issue 18's end-to-end proof).

The hub runs broker, lifecycle (with its in-process node ``hub``), approvals
and the dashboard in this process, on the real NATS and PostgreSQL. Two
machines join it as the operator would make them: ``hive join-token`` on the
hub, then one command on each machine, ``hive node --join <hub> --token <t>``,
which joins and runs the node agent in its place, with its own ``$HIVE_HOME``
and no database. Agents are placed on all three hosts (``--host``); each
node's harnesses run ``claude`` against the scripted API.

Checked: the relay ``operator → a@east → b@west → operator`` through the
broker; an approval deployed to ``b`` on its node (its harness restarted
there, the next turn runs the new ``agent.toml``'s model); an agent on one
node refused when it publishes as an agent on the other node or on the hub's
admin subjects (with its real seed, read from its node's data dir); the
dashboard in Chromium showing every agent's host and the three nodes, and
``b``'s page reached through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from playwright.async_api import Browser, expect

from hyperhive.cli.devstack import stop_harnesses
from hyperhive.cli.embedded import EmbeddedNats, free_port
from hyperhive.common import nats_auth, rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApproveRequest,
)
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.lifecycle import AgentInfo, AgentsReply, AgentsRequest, SpawnRequest
from hyperhive.common.wire.node import NodesReply
from tests import rig
from tests.browser import needs_chromium, open_page
from tests.harness.conftest import (
    CLAUDE,
    OPERATOR_TOKEN,
    UI_TIMEOUT_MS,
    Stack,
    agent_name,
    page_client,
    running_stack,
    script_relay,
    stack_settings,
)
from tests.scripted_anthropic import ScriptedAnthropic, last_user_mentions, mentions

pytestmark = [pytest.mark.claude, pytest.mark.slow, needs_chromium]

NODES = ("east", "west")
NEW_MODEL = "claude-west-ledger-1"  # what the approved agent.toml sets
TURN_S = 120  # one claude turn on a loaded 2-core machine, with room


@dataclass
class Node:
    name: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def agent(self, name: str) -> AgentPaths:
        return AgentPaths(self.home / "agents" / name)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def node_env(home: Path) -> dict[str, str]:
    """A new machine's environment: nothing of the hub's ``HIVE_*``; quick
    beats and checks so the test does not wait on production intervals.
    ``ANTHROPIC_*`` (the scripted API) pass through to its harnesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env.update(
        {
            "HIVE_HOME": str(home),
            "HIVE_NODE_HEARTBEAT_INTERVAL_S": "0.5",
            "HIVE_LIFECYCLE_MONITOR_INTERVAL_S": "0.3",
            "HIVE_LIFECYCLE_START_GRACE_S": "0.3",
            "HIVE_LIFECYCLE_STOP_TIMEOUT_S": "5",
            "HIVE_HARNESS_CLAUDE_BIN": CLAUDE,
            "HIVE_HARNESS_HEARTBEAT_INTERVAL_S": "0.5",
        }
    )
    return env


async def join_node(stack: Stack, op: Settings, nats_url: str, name: str, home: Path) -> Node:
    """``hive join-token`` on the hub, then the one command on the new machine
    (``hive node --join``: joins, then runs the node agent in its place);
    returns once the node agent beats.

    One machine at a time: the next token's reload of nats-server must not
    meet this node agent's connect (a connection that registers while
    nats-server swaps its users can keep stale permissions, tests/rig.py
    ``reload_nats``; ``hive node --join`` waits out its own token's removal
    for the same reason).
    """
    code, out, err = await rig.hive_cli(op, "join-token", "--json")
    assert code == 0, err
    token = json.loads(out)["token"]
    log = home.parent / f"{name}-node.log"
    proc = await asyncio.to_thread(start_node, nats_url, token, name, home, log)
    node = Node(name, home, proc, log)

    async def beats() -> bool:
        assert proc.poll() is None, node.output()
        reply = await rpc.request(
            stack.op, subjects.admin("lifecycle", "nodes"), Empty(), NodesReply
        )
        return any(n.name == name and n.last_seen and n.revision for n in reply.nodes)

    await rig.eventually(beats, timeout=60, what=f"{name} joined and beats")
    assert f"joined the hive at {nats_url} as node {name}" in node.output()
    return node


def start_node(
    hub_url: str, token: str, name: str, home: Path, log: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "hyperhive.cli.main", "node", "--join", hub_url]
    with open(log, "wb") as f:
        return subprocess.Popen(
            [*argv, "--token", token, "--name", name],
            env=node_env(home),
            stdout=f,
            stderr=subprocess.STDOUT,
        )


@contextlib.asynccontextmanager
async def joined_nodes(
    stack: Stack, nats_server: EmbeddedNats, root: Path
) -> AsyncIterator[dict[str, Node]]:
    op = rig.operator_settings(stack.settings, nats_server)
    nodes: dict[str, Node] = {}
    try:
        for name in NODES:
            nodes[name] = await join_node(stack, op, nats_server.url, name, root / name)
        yield nodes
    finally:
        for node in nodes.values():
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(15)
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
            await asyncio.to_thread(stop_harnesses, node.home / "agents", 10.0)
            nats_auth.remove_user(nats_server.root, nats_auth.node_user_name(node.name))
        nats_auth.render_auth_file(nats_server.root, nats_server.auth_file)
        await asyncio.to_thread(rig.reload_nats, nats_server)


async def nodes_up(stack: Stack) -> dict[str, object] | None:
    reply = await rpc.request(stack.op, subjects.admin("lifecycle", "nodes"), Empty(), NodesReply)
    found = {n.name: n for n in reply.nodes}
    # a node counts once its node agent beats (a join alone registers it)
    up = {n for n, x in found.items() if x.state == "up" and x.last_seen and x.revision}
    return found if {"hub", *NODES} <= up else None


async def spawn(stack: Stack, name: str, host: str) -> AgentInfo:
    return await rpc.request(
        stack.op,
        subjects.admin("lifecycle", "spawn"),
        SpawnRequest(name=name, host=host),
        AgentInfo,
        timeout=60,
    )


async def agents(stack: Stack) -> dict[str, AgentInfo]:
    reply = await rpc.request(
        stack.op, subjects.admin("lifecycle", "list"), AgentsRequest(), AgentsReply
    )
    return {a.name: a for a in reply.agents}


async def to_operator(stack: Stack, sender: str) -> list[str]:
    history = await stack.messages()
    return [m.body for m in history.messages if m.recipient == "operator" and m.sender == sender]


async def test_a_hive_across_three_hosts(
    nats_server: EmbeddedNats,
    database_url: str,
    hive_home: Path,
    tmp_path: Path,
    api: ScriptedAnthropic,
    browser: Browser,
) -> None:
    started = time.monotonic()
    settings = stack_settings(
        nats_server,
        database_url,
        hive_home,
        harness_command="",
        HIVE_LIFECYCLE_MANAGER=subjects.MANAGER,
        HIVE_DASHBOARD_PORT=str(free_port()),
        HIVE_DASHBOARD_TOKEN=OPERATOR_TOKEN,
        HIVE_NODE_HEARTBEAT_INTERVAL_S="0.5",
        HIVE_NODE_LOST_AFTER_S="30",
    )
    parts = ("broker", "lifecycle", "approvals", "dashboard")
    async with running_stack(nats_server, settings, parts) as stack:
        # the manager's harness connects before any join reloads nats-server
        await page_answers(AgentPaths.of(settings, subjects.MANAGER).page_socket)
        async with joined_nodes(stack, nats_server, tmp_path) as nodes:
            await across_three_hosts(stack, nats_server, settings, nodes, api, browser, started)


async def page_answers(sock: Path) -> None:
    async def up() -> bool:
        try:
            async with page_client(sock, timeout=2) as c:
                return (await c.get("/api/status")).status_code == 200
        except httpx.HTTPError:
            return False

    await rig.eventually(up, timeout=60, interval=0.2, what=f"the page at {sock} answers")


async def across_three_hosts(
    stack: Stack,
    nats_server: EmbeddedNats,
    settings: Settings,
    nodes: dict[str, Node],
    api: ScriptedAnthropic,
    browser: Browser,
    started: float,
) -> None:
    try:
        await rig.eventually(lambda: nodes_up(stack), timeout=60, what="hub, east, west up")
        joined_at = time.monotonic()

        a, b, c = agent_name("a"), agent_name("b"), agent_name("c")
        for name, host in ((a, "east"), (b, "west"), (c, "hub")):
            assert (await spawn(stack, name, host)).node == host
        placed = {n: x.node for n, x in (await agents(stack)).items()}
        assert placed == {subjects.MANAGER: "hub", a: "east", b: "west", c: "hub"}
        # each agent's run dir, seed and state live on its node
        for node, name in (("east", a), ("west", b)):
            assert nodes[node].agent(name).nats_seed.is_file()
            assert nodes[node].agent(name).state.is_dir()
            assert not any(AgentPaths.of(settings, name).state.glob("*"))  # the hub's: empty

        # operator → a@east → b@west → operator, claude deciding each send
        ping, pong = f"ping from {a} on east", f"pong from {b} on west"
        script_relay(api, a, b, prompt="relay this to", ping=ping, pong=pong)
        await stack.send(a, f"relay this to {b}")
        got = await rig.eventually(
            lambda: to_operator(stack, b), timeout=2 * TURN_S, what="b's answer"
        )
        assert got == [pong]
        relayed_at = time.monotonic()
        history = await stack.messages()
        a_to_b = [m for m in history.messages if m.sender == a and m.recipient == b]
        assert [m.body for m in a_to_b] == [ping]

        # an approval deployed to b on its node, seen in its next turn
        new_prompt = f"You keep the west ledger ({b})."
        proposed = AgentPaths.of(settings, b).proposed
        sha = commit_config(proposed, new_prompt, NEW_MODEL)
        async with rig.agent_connection(nats_server, settings, subjects.MANAGER) as mgr:
            queued = await rpc.request(
                mgr,
                subjects.manager_tool("request_apply_commit"),
                ApplyCommitRequest(name=b, commit_ref=sha),
                ApprovalQueued,
                timeout=30,
            )
        pid_before = nodes["west"].agent(b).pid_file.read_text()
        info = await rpc.request(
            stack.op,
            subjects.admin("approvals", "approve"),
            ApproveRequest(id=queued.id, decided_by="operator"),
            ApprovalInfo,
            timeout=120,
        )
        assert info.state == "deployed", info
        assert nodes["west"].agent(b).pid_file.read_text() != pid_before  # restarted
        on_west = nodes["west"].agent(b).applied / "agent.toml"
        assert new_prompt in on_west.read_text() and NEW_MODEL in on_west.read_text()
        assert not (nodes["west"].agent(b).applied / ".git").exists()
        is_b = mentions(f"You are {b},")
        api.reply("noted", when=lambda r: is_b(r) and last_user_mentions("after the deploy")(r))
        await stack.send(b, "after the deploy: who are you?")

        def turn_after_deploy() -> list[object]:
            return [r for r in api.matching(is_b) if last_user_mentions("after the deploy")(r)]

        reqs = await rig.eventually(turn_after_deploy, timeout=TURN_S, what="b's next turn")
        # the restarted harness on west runs the deployed agent.toml: its
        # model is the next turn's. (Its prompt is in the file but not in
        # this turn's system prompt: claude --continue keeps the system
        # prompt the conversation started with, on any host.)
        assert reqs[0].model == NEW_MODEL, reqs[0].model
        assert api.matching(is_b)[0].model != NEW_MODEL  # b's first turn, before it
        deployed_at = time.monotonic()

        # a's real seed, from east's data dir: it may not act as b (west)
        # nor reach the hub's admin subjects
        refused = await impersonation_refused(nats_server, nodes["east"].agent(a), a, b)
        assert refused == {
            subjects.agent(b, subjects.AGENT_SEND): True,
            subjects.admin("broker", "send"): True,
            subjects.admin("lifecycle", "spawn"): True,
        }

        # the dashboard in a real browser: every agent's host, the three nodes,
        # and b's page on west reached through the hub
        await dashboard_shows_three_hosts(
            browser, stack, {subjects.MANAGER: "hub", a: "east", b: "west", c: "hub"}, b
        )
        done_at = time.monotonic()

        print(
            f"multihost e2e: nodes up {joined_at - started:.1f}s, relay "
            f"{relayed_at - joined_at:.1f}s, deploy+turn {deployed_at - relayed_at:.1f}s, "
            f"refusals+dashboard {done_at - deployed_at:.1f}s"
        )
    except BaseException:
        for node in nodes.values():
            print(f"--- {node.name} node agent log ---\n{node.output()[-4000:]}")
        raise


def commit_config(repo: Path, prompt: str, model: str) -> str:
    """Edits agent.toml's prompt and model in the proposed repo and commits, as hm1nd would."""
    toml = repo / "agent.toml"
    text = toml.read_text()
    assert 'prompt = ""' in text and 'model = ""' in text, text
    text = text.replace('prompt = ""', f"prompt = {json.dumps(prompt)}")
    toml.write_text(text.replace('model = ""', f"model = {json.dumps(model)}"))
    git = ["git", "-C", str(repo), "-c", "user.name=hm1nd", "-c", "user.email=hm1nd@hive"]
    subprocess.run([*git, "commit", "-qam", "west ledger"], check=True)
    out = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


async def impersonation_refused(
    nats_server: EmbeddedNats, paths: AgentPaths, me: str, other: str
) -> dict[str, bool]:
    """Publishes as ``me`` (its seed) to ``other``'s send subject and two admin
    subjects, and to a subject of its own (the control); returns for each
    foreign subject whether the server refused it and nothing arrived."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    foreign = [
        subjects.agent(other, subjects.AGENT_SEND),
        subjects.admin("broker", "send"),
        subjects.admin("lifecycle", "spawn"),
    ]
    control = subjects.agent(me, "probe")
    spy = await rig.connect_as(nats_server, nats_server.service_seed)
    heard: list[str] = []

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        if msg.data == b"impersonation probe":
            heard.append(msg.subject)

    for subject in (*foreign, control):
        await spy.subscribe(subject, cb=on_msg)
    await spy.flush()
    nc = await nats.connect(
        nats_server.url,
        nkeys_seed_str=paths.nats_seed.read_text().strip(),
        inbox_prefix=subjects.inbox_prefix(me),
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        for subject in (*foreign, control):
            await nc.publish(subject, b"impersonation probe")
        await nc.flush()
        await rig.eventually(lambda: control in heard, timeout=10, what="the control arrives")
        await rig.eventually(
            lambda: sum("permissions violation" in e.lower() for e in errors) >= len(foreign),
            timeout=10,
            what="a refusal for each foreign subject",
        )
        await spy.flush()
    finally:
        await nc.close()
        await spy.close()
    return {s: s not in heard and any(s.lower() in e.lower() for e in errors) for s in foreign}


async def dashboard_shows_three_hosts(
    browser: Browser, stack: Stack, hosts: dict[str, str], remote: str
) -> None:
    async with open_page(browser, width=1280, height=900, timeout_ms=UI_TIMEOUT_MS) as page:
        request = page.context.request
        form = await (await request.get(f"{stack.dashboard}/login")).text()
        marker = 'name="_csrf" value="'
        csrf = form[form.index(marker) + len(marker) :].split('"', 1)[0]
        r = await request.post(
            f"{stack.dashboard}/login",
            form={"token": OPERATOR_TOKEN, "_csrf": csrf},
            max_redirects=0,
        )
        assert r.status == 303, await r.text()
        await page.goto(f"{stack.dashboard}/")
        for name, host in hosts.items():
            card = page.locator(f"#agent-{name}")
            await expect(card.locator('[data-role="host"]')).to_have_text(host)
            await expect(card).to_have_attribute("data-state", "running")
        for node, count in (("hub", 2), ("east", 1), ("west", 1)):
            row = page.locator(f"#node-{node}")
            await expect(row).to_have_attribute("data-state", "up")
            await expect(row.locator('[data-role="agents"]')).to_have_text(
                f"{count} agent{'' if count == 1 else 's'}"
            )
        # b's page lives on west: the hub's dashboard reaches it over NATS
        await page.goto(f"{stack.dashboard}/agents/{remote}/")
        await expect(page.locator("body")).to_contain_text(remote)
        badge = page.locator("#badge")
        await expect(badge).to_have_attribute("data-state", "idle")
