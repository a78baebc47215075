"""End to end under the process backend: lifecycle starts ``hive harness serve``
for each agent; broker, lifecycle and approvals are the real services; claude
is the real CLI against the scripted Anthropic API."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest

from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import endpoints, rpc, subjects
from hyperhive.common.errors import HiveError
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalInfo,
    ApprovalQueued,
    ApprovalsReply,
    ApprovalsRequest,
    ApproveRequest,
    QuestionsReply,
    QuestionsRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentRequest,
    AgentsReply,
    AgentsRequest,
    DraftsReply,
)
from tests import rig
from tests.harness.conftest import (
    Page,
    Stack,
    agent_name,
    assert_offers_hyperhive_tools,
    claude_blocks,
    claude_events,
    page_client,
    running_stack,
    script_relay,
    sse_records,
    stack_settings,
)
from tests.scripted_anthropic import (
    Block,
    Request,
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_result_text,
    tool_use,
)

pytestmark = [pytest.mark.claude, pytest.mark.slow]


@pytest.fixture
async def e2e(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, api: ScriptedAnthropic
) -> AsyncIterator[Stack]:
    """broker + lifecycle with the real harness command (no manager)."""
    settings = stack_settings(nats_server, database_url, hive_home, harness_command="")
    async with running_stack(nats_server, settings) as s:
        yield s


async def _page_up(stack: Stack, info: AgentInfo) -> str:
    """The agent page's socket, once it answers (the harness alone, no dashboard)."""
    sock = str(AgentPaths.of(stack.settings, info.name).page_socket)

    async def up() -> bool:
        try:
            async with page_client(sock, timeout=2) as c:
                return (await c.get("/api/status")).status_code == 200
        except httpx.HTTPError:
            return False

    await rig.eventually(up, timeout=60, interval=0.2, what=f"{info.name}'s page answers")
    return sock


def _tcp_listeners(stack: Stack, name: str) -> list[object]:
    """TCP sockets listening in the agent's harness process and all below it."""
    pid = int(AgentPaths.of(stack.settings, name).pid_file.read_text().split()[0])
    top = psutil.Process(pid)
    return [
        c
        for p in (top, *top.children(recursive=True))
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def _this_run(records: list[dict]) -> list[dict]:
    """The records of this harness run (numbered); a page also backfills the
    agent's earlier runs from HIVE_TURNS, e.g. another test's hm1nd."""
    return [r for r in records if "n" in r or r.get("sse") != "turn"]


def _turn_ended(turn: int = 1):
    def check(records: list[dict]) -> bool:
        return any(
            r.get("type") == "turn_end" and r.get("turn") == turn and "n" in r for r in records
        )

    return check


async def test_two_agents_talk_through_the_broker(e2e: Stack, api: ScriptedAnthropic) -> None:
    a, b = agent_name("a"), agent_name("b")
    info_a = await e2e.spawn(a)
    url_a = await _page_up(e2e, info_a)
    url_b = await _page_up(e2e, await e2e.spawn(b))
    # the page is a unix socket: nothing listens on the registry's port
    assert info_a.port > 0 and not _tcp_listeners(e2e, a) and not _tcp_listeners(e2e, b)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", info_a.port)) != 0
    script_relay(
        api,
        a,
        b,
        prompt="relay this to",
        ping=f"ping from {a}: status please",
        pong=f"pong from {b}: all good",
    )

    # both agent pages are followed live before anything happens
    tail_a = asyncio.create_task(sse_records(url_a, _turn_ended(), timeout=120))
    tail_b = asyncio.create_task(sse_records(url_b, _turn_ended(), timeout=120))
    sent = await e2e.send(a, f"relay this to {b}")
    rec_a, rec_b = await asyncio.gather(tail_a, tail_b)

    end_a = next(r for r in rec_a if r.get("type") == "turn_end")
    end_b = next(r for r in rec_b if r.get("type") == "turn_end")
    assert end_a["event"]["outcome"] == "ok" and end_b["event"]["outcome"] == "ok"
    start_b = next(r for r in rec_b if r.get("type") == "turn_start")["event"]
    assert start_b["sender"] == a and f"ping from {a}" in start_b["body"]
    tools_a = [blk["name"] for blk in claude_blocks(rec_a, "assistant", "tool_use")]
    assert tools_a == ["mcp__hyperhive__send"]
    for agent in (a, b):
        for req in api.matching(mentions(f"You are {agent},")):
            assert_offers_hyperhive_tools(req, agent)
    init_b = claude_events(rec_b, "system")[0]
    assert {s["name"]: s["status"] for s in init_b["mcp_servers"]} == {"hyperhive": "connected"}

    # the operator got b's answer; every message is acked; stats rows exist
    history = await e2e.messages()
    to_op = [m for m in history.messages if m.recipient == "operator"]
    assert [(m.sender, m.body) for m in to_op] == [(b, f"pong from {b}: all good")]
    assert (await e2e.status(sent.id)).state == "acked"
    a_to_b = next(m for m in history.messages if m.sender == a)
    assert (await e2e.status(a_to_b.id)).state == "acked"
    for name in (a, b):
        keys = await rig.eventually(
            lambda n=name: _keys(e2e, n), timeout=20, what=f"{name}'s stats rows"
        )
        assert {"duration_ms", "messages_sent", "tool.mcp__hyperhive__send"} <= keys


async def _restarted(url: str, boot: dict) -> dict:
    """The status of the agent's page once a harness started after ``boot``
    (a status of the earlier run) answers it."""

    async def restarted() -> dict | None:
        try:
            async with page_client(url, timeout=2) as c:
                st = (await c.get("/api/status")).json()
        except (httpx.HTTPError, ValueError):
            return None
        return st if st["now"] > boot["now"] and st["since"] > boot["since"] else None

    return await rig.eventually(restarted, timeout=60, interval=0.2, what="harness restarted")


async def _keys(stack: Stack, name: str) -> set[str] | None:
    return {p.key for p in (await stack.stats(name)).points} or None


async def test_model_survives_a_harness_restart(e2e: Stack, api: ScriptedAnthropic) -> None:
    name = agent_name("r")
    info = await e2e.spawn(name)
    url = await _page_up(e2e, info)
    page = Page(url)
    await page.open()
    assert (await page.prompt("/model claude-kept-1"))["ok"]
    boot = (await page.client.get("/api/status")).json()
    await page.close()

    await rpc.request(
        e2e.op,
        subjects.admin("lifecycle", "restart"),
        AgentRequest(name=name),
        AgentInfo,
        timeout=60,
    )

    status = await _restarted(url, boot)
    assert status["model"] == "claude-kept-1"
    tail = asyncio.create_task(sse_records(url, _turn_ended(1), timeout=120))
    await e2e.send(name, "which model now")
    await tail
    assert api.requests[-1].model == "claude-kept-1"


async def test_host_api_settings_reach_claude_after_a_restart(
    e2e: Stack, api: ScriptedAnthropic
) -> None:
    name = agent_name("h")
    url = await _page_up(e2e, await e2e.spawn(name))
    tail = asyncio.create_task(sse_records(url, _turn_ended(1), timeout=120))
    await e2e.send(name, "before the restart")
    await tail
    await rpc.request(
        e2e.op,
        subjects.admin("lifecycle", "restart"),
        AgentRequest(name=name),
        AgentInfo,
        timeout=60,
    )
    await _page_up(e2e, await _info(e2e, name))
    tail = asyncio.create_task(sse_records(url, _turn_ended(2), timeout=120))
    await e2e.send(name, "after the restart")
    records = await tail
    end = next(r for r in records if r.get("type") == "turn_end" and r["turn"] == 2)
    assert end["event"]["outcome"] == "ok", end["event"]["error"]


# run by the agent's claude through its Bash tool, inside its sandbox: an HTTP
# GET of /api/status on each unix socket and TCP address named
PAGE_PROBE = """python3 - <<'EOF'
import socket
for target in {targets!r}:
    family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET
    s = socket.socket(family)
    s.settimeout(5)
    try:
        s.connect(target)
        s.sendall(b"GET /api/status HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b"".join(iter(lambda: s.recv(65536), b""))
        print("ANSWERED", target, data.decode(errors="replace").replace("\\n", " "))
    except OSError as e:
        print("REFUSED", target, e)
EOF"""


@pytest.fixture
async def e2e_bwrap(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, api: ScriptedAnthropic
) -> AsyncIterator[Stack]:
    """broker + lifecycle, harnesses under bubblewrap as with ``hive up``."""
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap not installed")
    settings = stack_settings(
        nats_server, database_url, hive_home, harness_command="", HIVE_LIFECYCLE_USE_BWRAP="true"
    )
    async with running_stack(nats_server, settings) as s:
        yield s


async def test_an_agent_cannot_reach_another_agents_page(
    e2e_bwrap: Stack, api: ScriptedAnthropic
) -> None:
    """A hostile agent's claude, from its Bash tool in its sandbox, tries the
    other agent's page socket (by its host path) and its registry port: both
    fail; its own page answers. The other agent's state is unchanged."""
    e2e = e2e_bwrap
    a, b = agent_name("x"), agent_name("y")
    info_b = await e2e.spawn(b)
    sock_b = await _page_up(e2e, info_b)
    await e2e.spawn(a)
    paths_a = AgentPaths.of(e2e.settings, a)
    (paths_a.applied / "agent.toml").write_text('allowed_tools = ["Bash"]\n')
    await rpc.request(
        e2e.op, subjects.admin("lifecycle", "restart"), AgentRequest(name=a), AgentInfo, timeout=60
    )
    sock_a = await _page_up(e2e, await _info(e2e, a))
    before_b = await _status(sock_b)

    is_a = mentions(f"You are {a},")
    probe = PAGE_PROBE.format(targets=[sock_b, sock_a, ("127.0.0.1", info_b.port)])
    api.reply(
        tool_use("Bash", {"command": probe, "description": "probe the pages"}),
        when=lambda r: is_a(r) and last_user_mentions("probe the pages")(r),
    )
    api.reply("probed", when=after_tool_results(1, also=is_a))
    tail = asyncio.create_task(sse_records(sock_a, _turn_ended(1), timeout=120))
    await e2e.send(a, "probe the pages")
    records = _this_run(await tail)
    (result,) = claude_blocks(records, "user", "tool_result")
    out = tool_result_text(result)
    assert f"REFUSED {sock_b}" in out and f"ANSWERED {sock_b}" not in out, out
    assert f"REFUSED ('127.0.0.1', {info_b.port})" in out, out
    assert f"ANSWERED {sock_a}" in out and f'"agent":"{a}"' in out, out  # its own: yes
    after_b = await _status(sock_b)
    assert after_b["turn"] == before_b["turn"] and after_b["queued"] == 0


async def _status(sock: str) -> dict:
    async with page_client(sock, timeout=10) as c:
        return (await c.get("/api/status")).json()  # type: ignore[no-any-return]


async def _info(stack: Stack, name: str) -> AgentInfo:
    reply = await rpc.request(
        stack.op, subjects.admin("lifecycle", "list"), AgentsRequest(), AgentsReply
    )
    return next(a for a in reply.agents if a.name == name)


@pytest.fixture
async def with_manager(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, api: ScriptedAnthropic
) -> AsyncIterator[Stack]:
    """broker + lifecycle (which creates and starts hm1nd) + approvals."""
    settings = stack_settings(
        nats_server, database_url, hive_home, harness_command="", HIVE_LIFECYCLE_MANAGER="hm1nd"
    )
    async with running_stack(nats_server, settings, ("broker", "lifecycle", "approvals")) as s:
        yield s


async def test_manager_tools_reach_the_approvals_queue(
    with_manager: Stack, api: ScriptedAnthropic
) -> None:
    stack = with_manager
    newbie = agent_name("n")
    manager = mentions("You are hm1nd,")
    api.reply(
        tool_use("mcp__hyperhive__request_spawn", {"name": newbie}),
        when=lambda r: manager(r) and last_user_mentions("grow the hive")(r),
    )
    api.reply(
        tool_use(
            "mcp__hyperhive__ask_operator",
            {"question": "Which colour for the new agent?", "options": ["red", "blue"]},
        ),
        when=after_tool_results(1, also=manager),
    )
    api.reply("asked the operator", when=after_tool_results(2, also=manager))

    agents = await _agents(stack)
    url = await _page_up(stack, agents[subjects.MANAGER])
    tail = asyncio.create_task(sse_records(url, _turn_ended(1), timeout=120))
    await stack.send(subjects.MANAGER, "grow the hive by one agent")
    records = _this_run(await tail)  # hm1nd's earlier runs are backfilled too
    end = next(r for r in records if r.get("type") == "turn_end")["event"]
    assert end["outcome"] == "ok"
    init = claude_events(records, "system")[0]
    for tool in endpoints.MANAGER_TOOLS:
        assert f"mcp__hyperhive__{tool}" in init["tools"]
    # every request of the turn offered all of hm1nd's tools with their schemas
    turn = api.matching(manager)
    assert len(turn) >= 3
    for req in turn:
        assert_offers_hyperhive_tools(req, subjects.MANAGER)
    results = claude_blocks(records, "user", "tool_result")
    assert len(results) == 2 and not any(x.get("is_error") for x in results)

    approvals = await rpc.request(
        stack.op,
        subjects.admin("approvals", "list"),
        ApprovalsRequest(state="pending"),
        ApprovalsReply,
    )
    assert [(x.kind, x.agent) for x in approvals.approvals] == [("Spawn", newbie)]
    questions = await rpc.request(
        stack.op, subjects.admin("approvals", "questions"), QuestionsRequest(), QuestionsReply
    )
    assert [(q.question, q.options) for q in questions.questions] == [
        ("Which colour for the new agent?", ["red", "blue"])
    ]


async def test_a_non_manager_cannot_call_manager_tools(
    with_manager: Stack, api: ScriptedAnthropic
) -> None:
    """Not offered to claude (see test_turns), and refused when called directly
    with the agent's own NATS credentials."""
    stack = with_manager
    name = agent_name("w")
    await stack.spawn(name)
    async with rig.agent_connection(stack.nats, stack.settings, name) as nc:
        for subject in (
            subjects.manager_tool("request_spawn"),  # not allowed to publish there
            subjects.agent(name, "request_spawn"),  # nobody serves it for a non-manager
        ):
            with pytest.raises(HiveError):
                await rpc.request(
                    nc, subject, SpawnToolRequest(name="sneaky"), ApprovalQueued, timeout=3
                )
    approvals = await rpc.request(
        stack.op, subjects.admin("approvals", "list"), ApprovalsRequest(), ApprovalsReply
    )
    assert not [x for x in approvals.approvals if x.agent == "sneaky"]


async def _agents(stack: Stack) -> dict[str, AgentInfo]:
    async def listed() -> dict[str, AgentInfo] | None:
        reply = await rpc.request(
            stack.op, subjects.admin("lifecycle", "list"), AgentsRequest(), AgentsReply
        )
        agents = {x.name: x for x in reply.agents}
        return agents if subjects.MANAGER in agents else None

    return await rig.eventually(listed, timeout=60, interval=0.2, what="the manager exists")


def _commit_toml(repo: Path, old: str, new: str, message: str) -> str:
    """Edits agent.toml in a proposed repo and commits, as hm1nd would; returns the sha."""
    toml = repo / "agent.toml"
    toml.write_text(toml.read_text().replace(old, new))
    git = ["git", "-C", str(repo), "-c", "user.name=hm1nd", "-c", "user.email=hm1nd@hive"]
    subprocess.run([*git, "commit", "-qam", message], check=True)
    out = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


async def test_manager_drives_two_step_spawn_apply_and_lifecycle_tools_over_mcp(
    with_manager: Stack, api: ScriptedAnthropic
) -> None:
    """One manager turn calls every remaining manager tool through MCP:
    request_spawn_draft → (a commit in the draft's repo) → request_spawn_commit,
    request_apply_commit, kill / start / restart / update of an agent, and a
    refused call (restarting itself) that comes back as a tool error."""
    stack = with_manager
    url = await _page_up(stack, (await _agents(stack))[subjects.MANAGER])
    worker, draftee = agent_name("wk"), agent_name("dr")
    await stack.spawn(worker)
    worker_sha = _commit_toml(
        AgentPaths.of(stack.settings, worker).proposed,
        'prompt = ""',
        'prompt = "work hard"',
        "work hard",
    )
    manager = mentions("You are hm1nd,")
    draft_sha: list[str] = []

    def commit_the_draft(_req: Request) -> Block:
        # between the tool calls hm1nd edits and commits /agents/<draftee>/config
        sha = _commit_toml(
            AgentPaths.of(stack.settings, draftee).proposed,
            'prompt = ""',
            'prompt = "a drafted agent"',
            "draft config",
        )
        draft_sha.append(sha)
        return tool_use(
            "mcp__hyperhive__request_spawn_commit", {"name": draftee, "commit_ref": sha}
        )

    script: list[Block | Callable[[Request], Block] | str] = [
        tool_use("mcp__hyperhive__request_spawn_draft", {"name": draftee}),
        commit_the_draft,
        tool_use(
            "mcp__hyperhive__request_apply_commit", {"name": worker, "commit_ref": worker_sha}
        ),
        tool_use("mcp__hyperhive__kill", {"name": worker}),
        tool_use("mcp__hyperhive__start", {"name": worker}),
        tool_use("mcp__hyperhive__restart", {"name": worker}),
        tool_use("mcp__hyperhive__update", {"name": worker}),
        tool_use("mcp__hyperhive__restart", {"name": subjects.MANAGER}),
        "the hive is staffed",
    ]
    api.reply(script[0], when=lambda r: manager(r) and last_user_mentions("staff the hive")(r))
    for i, step in enumerate(script[1:], start=1):
        api.reply(step, when=after_tool_results(i, also=manager))

    tail = asyncio.create_task(sse_records(url, _turn_ended(1), timeout=240))
    await stack.send(subjects.MANAGER, "staff the hive: draft, configure and tend the agents")
    records = _this_run(await tail)  # hm1nd's earlier runs are backfilled too
    end = next(r for r in records if r.get("type") == "turn_end")["event"]
    assert end["outcome"] == "ok", end
    calls = [
        blk["name"].removeprefix("mcp__hyperhive__")
        for blk in claude_blocks(records, "assistant", "tool_use")
    ]
    assert calls == [
        "request_spawn_draft",
        "request_spawn_commit",
        "request_apply_commit",
        "kill",
        "start",
        "restart",
        "update",
        "restart",
    ]
    results = claude_blocks(records, "user", "tool_result")
    assert len(results) == len(calls)
    *fine, refused = results
    for call, result in zip(calls, fine, strict=False):
        assert not result.get("is_error"), (call, tool_result_text(result))
    docs = [json.loads(tool_result_text(r)) for r in fine]
    draft, spawn_q, apply_q, killed, started, restarted, updated = docs
    assert draft["name"] == draftee and draft["head"]
    assert spawn_q["state"] == "pending" and spawn_q["fetched_sha"] == draft_sha[0]
    assert apply_q["state"] == "pending" and apply_q["fetched_sha"] == worker_sha
    assert (killed["name"], killed["state"]) == (worker, "stopped")
    assert (started["name"], started["state"]) == (worker, "running")
    assert (restarted["name"], restarted["state"]) == (worker, "running")
    assert (updated["name"], updated["state"]) == (worker, "running")
    # the service's refusal reaches claude as a tool error with its message
    assert refused.get("is_error")
    assert "forbidden" in tool_result_text(refused)
    assert "the manager cannot restart itself" in tool_result_text(refused)

    # the queue holds both proposals; the draft is a draft; the worker runs
    approvals = await rpc.request(
        stack.op,
        subjects.admin("approvals", "list"),
        ApprovalsRequest(state="pending"),
        ApprovalsReply,
    )
    queued = {(x.id, x.kind, x.agent, x.fetched_sha) for x in approvals.approvals}
    assert (spawn_q["id"], "Spawn", draftee, draft_sha[0]) in queued
    assert (apply_q["id"], "ApplyCommit", worker, worker_sha) in queued
    drafts = await rpc.request(
        stack.op, subjects.admin("lifecycle", "drafts"), Empty(), DraftsReply
    )
    assert [(d.name, d.head) for d in drafts.drafts if d.name == draftee] == [
        (draftee, draft_sha[0])
    ]
    agents = await _agents(stack)
    assert draftee not in agents  # no container until the operator approves
    assert agents[worker].state == "running"
    assert agents[subjects.MANAGER].state == "running"


async def test_an_approved_prompt_change_starts_a_new_conversation(
    with_manager: Stack, api: ScriptedAnthropic
) -> None:
    """A continued claude conversation keeps the system prompt it started with,
    so a deployed change of agent.toml's ``prompt`` starts a new conversation
    (with the new prompt, without the old messages), said in the tail and the
    log; a restart with the prompt unchanged continues the conversation."""
    stack = with_manager
    worker = agent_name("pc")
    paths = AgentPaths.of(stack.settings, worker)
    url = await _page_up(stack, await stack.spawn(worker))

    def worker_asked(task: str) -> Request:
        reqs = [
            r
            for r in api.requests
            if f"You are {worker}," in r.system_text() and last_user_mentions(task)(r)
        ]
        assert reqs, f"no request of {worker} for {task!r}"
        return reqs[-1]

    async def turn(n: int, task: str) -> list[dict]:
        tail = asyncio.create_task(sse_records(url, _turn_ended(n), timeout=120))
        await stack.send(worker, task)
        records = _this_run(await tail)
        end = next(r for r in records if r.get("type") == "turn_end" and r["turn"] == n)
        assert end["event"]["outcome"] == "ok", end["event"]
        return records

    await turn(1, "first task")
    assert "SIGN-AS-PELICAN" not in worker_asked("first task").system_text()

    # the operator approves a new prompt; the deploy restarts the harness
    boot = await _status(url)
    sha = _commit_toml(
        paths.proposed, 'prompt = ""', 'prompt = "Sign every answer SIGN-AS-PELICAN."', "prompt"
    )
    async with rig.agent_connection(stack.nats, stack.settings, subjects.MANAGER) as hm1nd:
        queued = await rpc.request(
            hm1nd,
            subjects.manager_tool("request_apply_commit"),
            ApplyCommitRequest(name=worker, commit_ref=sha),
            ApprovalQueued,
            timeout=30,
        )
    info = await rpc.request(
        stack.op,
        subjects.admin("approvals", "approve"),
        ApproveRequest(id=queued.id),
        ApprovalInfo,
        timeout=120,
    )
    assert info.state == "deployed", info
    await _restarted(url, boot)

    records = await turn(2, "second task")
    req = worker_asked("second task")
    assert "SIGN-AS-PELICAN" in req.system_text()
    assert not any("first task" in t for t in req.user_texts()), req.user_texts()
    start = next(r for r in records if r.get("type") == "turn_start" and r["turn"] == 2)
    assert start["event"]["fresh"] is True
    said = [r["event"] for r in records if r.get("type") == "new_conversation"]
    assert [(e["reason"], e["text"]) for e in said] == [
        ("prompt_changed", "new conversation: the prompt changed")
    ]
    assert "new conversation: the prompt changed" in paths.log_file.read_text()

    # a restart with the same prompt continues that conversation
    boot = await _status(url)
    await rpc.request(
        stack.op, subjects.admin("lifecycle", "restart"), AgentRequest(name=worker), AgentInfo
    )
    await _restarted(url, boot)
    records = await turn(3, "third task")
    req = worker_asked("third task")
    assert "SIGN-AS-PELICAN" in req.system_text()
    assert any("second task" in t for t in req.user_texts()), req.user_texts()
    assert not any("first task" in t for t in req.user_texts())
    start = next(r for r in records if r.get("type") == "turn_start" and r["turn"] == 3)
    assert start["event"]["fresh"] is False
    assert not [r for r in records if r.get("type") == "new_conversation" and "n" in r]
