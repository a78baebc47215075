"""Harness fixtures: the scripted Anthropic API, a real broker + lifecycle, harnesses.

Two ways to run a harness:
- in this process (:func:`running_harness`): lifecycle provisions the agent
  (registry row, dirs, NATS credentials) with a stand-in harness command
  (``sleep``), and the test runs the real harness here with the agent's
  credentials, so it can look at the :class:`Harness` object directly;
- under the process backend (tests marked e2e in test_e2e.py): lifecycle
  starts ``hive harness serve`` itself.
Either way claude is the real CLI, pointed at a :class:`ScriptedAnthropic`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from playwright.async_api import Browser
from playwright.async_api import Page as BrowserPage

from hyperhive.cli.devstack import stop_harnesses
from hyperhive.cli.embedded import EmbeddedNats, free_port
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings, load_settings, settings_env
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.broker import (
    AdminSendRequest,
    HistoryReply,
    InboxRequest,
    MessagesRequest,
    MessageStatus,
    SendReply,
    StatsReply,
    StatsRequest,
    StatusRequest,
)
from hyperhive.common.wire.lifecycle import AgentInfo, SpawnRequest
from hyperhive.harness.config import find_claude
from hyperhive.harness.loop import Harness
from hyperhive.harness.serve import run as run_harness
from hyperhive.harness.tools import SERVER_NAME, tool_names
from tests import rig
from tests.browser import chromium
from tests.scripted_anthropic import (
    Request,
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_use,
)

CLAUDE = find_claude("")
SLEEP = "sleep 3600"
OPERATOR_TOKEN = "operator-test-token"  # the dashboard's, in dash_stack
UI_TIMEOUT_MS = 60_000  # the browser tests' page and expect() timeout (claude is slow here)
_names = itertools.count(1)


def agent_name(prefix: str = "h") -> str:
    """A name unique in this pytest run (NATS users are shared by the session)."""
    return f"{prefix}{os.getpid() % 1000}{next(_names)}"[:9]


def script_relay(
    api: ScriptedAnthropic, a: str, b: str, *, prompt: str, ping: str, pong: str
) -> None:
    """Scripts one exchange through the broker: ``a``, asked with a message that
    mentions ``prompt``, sends ``ping`` to ``b`` (MCP ``send``) and ends its turn;
    ``b``, woken by the ping, sends ``pong`` to the operator and ends its turn."""
    is_a, is_b = mentions(f"You are {a},"), mentions(f"You are {b},")
    api.reply(
        tool_use("mcp__hyperhive__send", {"to": b, "body": ping}),
        when=lambda r: is_a(r) and last_user_mentions(prompt)(r),
    )
    api.reply("relayed", when=after_tool_results(1, also=is_a))
    api.reply(
        tool_use("mcp__hyperhive__send", {"to": "operator", "body": pong}),
        when=lambda r: is_b(r) and last_user_mentions(ping)(r),
    )
    api.reply("answered", when=after_tool_results(1, also=is_b))


def assert_offers_hyperhive_tools(req: Request, agent: str) -> None:
    """Every hyperhive tool of ``agent`` is offered in ``req`` with its input
    schema (not deferred behind tool search), and no manager tool to another agent."""
    offered = req.offered
    mine = {f"mcp__{SERVER_NAME}__{t}" for t in tool_names(agent)}
    missing = sorted(mine - set(offered))
    assert not missing, f"{agent}'s request offers no {missing}; it offered {sorted(offered)}"
    for name in mine:
        assert offered[name].get("type") == "object" and "properties" in offered[name], name
    others = {t for t in req.tool_names if t.startswith(f"mcp__{SERVER_NAME}__")} - mine
    assert not others, f"{agent} is offered {sorted(others)}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, expect() waiting up to UI_TIMEOUT_MS."""
    async with chromium(expect_timeout_ms=UI_TIMEOUT_MS) as b:
        yield b


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedAnthropic]:
    """The scripted API, and this process's environment pointing claude at it
    (the harness passes ANTHROPIC_* through; lifecycle hands them to harnesses).

    At teardown the test fails if the CLI sent a request the real API refuses
    or the script called a tool the request did not offer.
    """
    server = ScriptedAnthropic().start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()
    server.check()


def stack_settings(
    nats: EmbeddedNats, database_url: str, home: Path, *, harness_command: str = SLEEP, **env: str
) -> Settings:
    overrides = {
        "HIVE_LIFECYCLE_HARNESS_COMMAND": harness_command,
        "HIVE_LIFECYCLE_MANAGER": "",
        "HIVE_LIFECYCLE_MANAGER_PORT": str(free_port()),
        "HIVE_LIFECYCLE_PORT_BASE": "21100",
        "HIVE_LIFECYCLE_PORT_COUNT": "800",
        "HIVE_LIFECYCLE_START_GRACE_S": "0.3",
        "HIVE_LIFECYCLE_STOP_TIMEOUT_S": "5",
        "HIVE_LIFECYCLE_MONITOR_INTERVAL_S": "0.3",
        "HIVE_LIFECYCLE_AUTO_UPDATE_INTERVAL_S": "3600",
        "HIVE_HARNESS_CLAUDE_BIN": CLAUDE,
        "HIVE_HARNESS_HEARTBEAT_INTERVAL_S": "0.5",
        "HIVE_HARNESS_RECV_WAIT_S": "2",
        "HIVE_BROKER_VISIBILITY_TIMEOUT_S": "600",
    }
    overrides.update(env)
    return rig.make_settings(nats, database_url, home, **overrides)


@dataclass
class Stack:
    """broker + lifecycle (+ approvals) running in this process, and operator calls."""

    settings: Settings
    nats: EmbeddedNats
    op: NATS

    async def spawn(self, name: str) -> AgentInfo:
        return await rpc.request(
            self.op,
            subjects.admin("lifecycle", "spawn"),
            SpawnRequest(name=name),
            AgentInfo,
            timeout=60,
        )

    async def send(self, to: str, body: str) -> SendReply:
        return await rpc.request(
            self.op,
            subjects.admin("broker", "send"),
            AdminSendRequest(to=to, body=body),
            SendReply,
        )

    async def messages(self, agent: str | None = None) -> HistoryReply:
        return await rpc.request(
            self.op,
            subjects.admin("broker", "messages"),
            MessagesRequest(agent=agent, limit=500),
            HistoryReply,
        )

    async def status(self, message_id: int) -> MessageStatus:
        return await rpc.request(
            self.op,
            subjects.admin("broker", "status"),
            StatusRequest(id=message_id),
            MessageStatus,
        )

    async def inbox(self, agent: str) -> HistoryReply:
        return await rpc.request(
            self.op, subjects.admin("broker", "inbox"), InboxRequest(agent=agent), HistoryReply
        )

    async def stats(self, agent: str) -> StatsReply:
        return await rpc.request(
            self.op, subjects.admin("broker", "stats"), StatsRequest(agent=agent), StatsReply
        )

    @property
    def dashboard(self) -> str:
        """The dashboard's URL (when it runs: :func:`dash_stack`)."""
        return f"http://127.0.0.1:{self.settings.dashboard.port}"

    def operator(self, *, login: bool = True) -> httpx.AsyncClient:
        """A client of the dashboard, logged in with the operator token (or not)."""
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"} if login else {}
        return httpx.AsyncClient(base_url=self.dashboard, timeout=30, headers=headers)

    def harness_settings(self, name: str, **env: str) -> Settings:
        """Settings of an in-process harness for agent ``name`` (its own credentials)."""
        paths = AgentPaths.of(self.settings, name)
        base = settings_env(self.settings)
        base.update(
            {
                "HIVE_NATS_SEED_FILE": str(paths.nats_seed),
                "HIVE_NATS_INBOX_PREFIX": subjects.inbox_prefix(name),
                "HIVE_HARNESS_AGENT": name,
                "HIVE_HARNESS_SOCKET": str(paths.page_socket),
                "HIVE_HARNESS_WORKDIR": str(paths.workdir),
                "HIVE_HARNESS_STATE_DIR": str(paths.state),
                "HIVE_HARNESS_CREDS_DIR": str(paths.creds),
                "HIVE_HARNESS_CONFIG_DIR": str(paths.applied),
            }
        )
        base.update(env)
        return load_settings(base, config_file=None)


@contextlib.asynccontextmanager
async def running_stack(
    nats: EmbeddedNats, settings: Settings, parts: tuple[str, ...] = ("broker", "lifecycle")
) -> AsyncIterator[Stack]:
    op = await rig.connect_as(nats, nats.operator_seed, "_INBOX.operator")
    try:
        async with contextlib.AsyncExitStack() as stack:
            for part in parts:
                await stack.enter_async_context(rig.running_service(part, settings))
            try:
                yield Stack(settings=settings, nats=nats, op=op)
            finally:
                # harnesses first, while NATS and the broker still answer them
                await asyncio.to_thread(stop_harnesses, settings.paths.agents_dir, 10.0)
    finally:
        await op.close()
        rig.cleanup_agents(nats, settings.paths.agents_dir)


@pytest.fixture
def stack_cfg(nats_server: EmbeddedNats, database_url: str, hive_home: Path) -> Settings:
    return stack_settings(nats_server, database_url, hive_home)


@pytest.fixture
async def stack(
    nats_server: EmbeddedNats, stack_cfg: Settings, api: ScriptedAnthropic
) -> AsyncIterator[Stack]:
    async with running_stack(nats_server, stack_cfg) as s:
        yield s


@pytest.fixture
async def dash_stack(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, api: ScriptedAnthropic
) -> AsyncIterator[Stack]:
    """broker + lifecycle + the dashboard, which requires the operator token."""
    settings = stack_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_DASHBOARD_PORT=str(free_port()),
        HIVE_DASHBOARD_TOKEN=OPERATOR_TOKEN,
    )
    async with running_stack(nats_server, settings, ("broker", "lifecycle", "dashboard")) as s:
        yield s


async def page_csrf(client: httpx.AsyncClient, name: str) -> str:
    """Opens agent ``name``'s page on the dashboard (sets the CSRF cookie);
    returns the page's CSRF token."""
    r = await client.get(f"/agents/{name}/", headers={"accept": "text/html"})
    assert r.status_code == 200, r.text[:300]
    marker = 'name="csrf-token" content="'
    start = r.text.index(marker) + len(marker)
    return r.text[start : r.text.index('"', start)]


async def open_agent_page(page: BrowserPage, stack: Stack, name: str) -> None:
    """Logs ``page``'s browser context in on the dashboard (its login form,
    posted from the context, whose cookies the page shares) and opens agent
    ``name``'s page there."""
    request = page.context.request
    form = await request.get(f"{stack.dashboard}/login")
    marker = 'name="_csrf" value="'
    text = await form.text()
    start = text.index(marker) + len(marker)
    csrf = text[start : text.index('"', start)]
    r = await request.post(
        f"{stack.dashboard}/login",
        form={"token": OPERATOR_TOKEN, "_csrf": csrf},
        max_redirects=0,
    )
    assert r.status == 303, await r.text()
    await page.goto(f"{stack.dashboard}/agents/{name}/")


@dataclass
class Running:
    """A harness running in this process."""

    harness: Harness
    socket: str  # the page's API (a unix socket)
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def name(self) -> str:
        return self.harness.cfg.agent

    def records(self, type: str | None = None, turn: int | None = None) -> list[Any]:
        """Turn records in the harness's live ring."""
        return [
            r.event
            for r in self.harness.hub.snapshot()
            if (type is None or r.event.type == type) and (turn is None or r.event.turn == turn)
        ]

    async def turn_end(self, turn: int | None = None, timeout: float = 60) -> dict[str, Any]:
        """Waits for the ``turn_end`` record of ``turn`` (default: the next one)."""
        target = turn if turn is not None else self.harness.turn + 1

        def done() -> dict[str, Any] | None:
            ends = self.records("turn_end", target)
            return ends[0].event if ends else None

        return await rig.eventually(done, timeout=timeout, what=f"turn {target} ends")

    def claude_events(self, turn: int, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e.event
            for e in self.records("claude", turn)
            if kind is None or e.event.get("type") == kind
        ]


@contextlib.asynccontextmanager
async def running_harness(settings: Settings) -> AsyncIterator[Running]:
    """Runs ``hive harness serve`` in this event loop until the block ends."""
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[Harness, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_harness(
            settings,
            stop=stop,
            ready=lambda h, p: ready.set_result((h, p)),
            handle_signals=False,
        )
    )
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise AssertionError("the harness stopped at start")
    if not done:
        task.cancel()
        raise TimeoutError("the harness did not start within 30s")
    harness, socket = ready.result()
    try:
        yield Running(harness=harness, socket=socket, stop=stop, task=task)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def page_client(socket: str | Path, **kw: Any) -> httpx.AsyncClient:
    """An HTTP client of an agent page's API on its unix socket (``/api/...``)."""
    transport = httpx.AsyncHTTPTransport(uds=str(socket))
    return httpx.AsyncClient(transport=transport, base_url="http://agent-page", **kw)


class Page:
    """An HTTP client of an agent page's API, straight to its socket (the
    harness alone; the operator's way in is the dashboard, see test_proxy)."""

    def __init__(self, socket: str | Path) -> None:
        self.client = page_client(socket, timeout=30)

    async def open(self) -> dict[str, Any]:
        r = await self.client.get("/api/status")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    async def post(self, path: str, doc: dict[str, Any] | None = None) -> httpx.Response:
        return await self.client.post(f"/api{path}", json=doc or {})

    async def prompt(self, text: str) -> dict[str, Any]:
        r = await self.post("/prompt", {"text": text})
        return {"status": r.status_code, **r.json()}

    async def close(self) -> None:
        await self.client.aclose()


def claude_events(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The claude stream-json events of type ``kind`` (``system``, ``assistant``,
    ``user``) among an agent page's records."""
    return [
        r["event"] for r in records if r.get("type") == "claude" and r["event"].get("type") == kind
    ]


def claude_blocks(records: list[dict[str, Any]], kind: str, block: str) -> list[dict[str, Any]]:
    """The content blocks of type ``block`` (``text``, ``tool_use``, ``tool_result``)
    in the messages of the ``kind`` events among an agent page's records."""
    return [
        blk
        for event in claude_events(records, kind)
        for blk in event["message"]["content"]
        if isinstance(blk, dict) and blk.get("type") == block
    ]


async def sse_records(
    socket: str | Path,
    until: Any,
    timeout: float = 60,
    headers: dict[str, str] | None = None,
    client: httpx.AsyncClient | None = None,
    path: str = "/api/events",
    opened: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """Reads an agent page's SSE stream until ``until(records)`` is true.

    Straight from the page's ``socket``, or with ``client`` (the dashboard's
    proxy, ``path`` then names the agent). ``opened`` is set once the stream
    answered (what happens from then on reaches it live).
    Returns every ``turn``/``status``/``reset`` frame as ``{"sse": kind, **data}``.
    """
    out: list[dict[str, Any]] = []
    hdrs = dict(headers or {})
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(page_client(socket, timeout=None))
        async with asyncio.timeout(timeout):
            async with client.stream("GET", path, headers=hdrs, timeout=None) as r:
                r.raise_for_status()
                assert r.headers["content-type"].startswith("text/event-stream"), r.headers
                if opened is not None:
                    opened.set()
                kind, data, ident = "message", "", None
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line.startswith("id:"):
                        ident = line[3:].strip()
                    elif line == "":
                        if data:
                            doc = json.loads(data)
                            out.append({"sse": kind, "sse_id": ident, **doc})
                            if until(out):
                                return out
                        kind, data, ident = "message", "", None
    return out
