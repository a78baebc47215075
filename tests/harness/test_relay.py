"""Agent pages of agents on other nodes: the dashboard reaches them over NATS.

The dashboard here believes it runs on node ``view`` (``HIVE_NODE_NAME``) and
connects with the operator's NATS credentials, as the NixOS module runs it;
the agents are registered on node ``hub``, so every page call travels as
``hive.node.hub.page.<agent>.<op>`` to the page relay
(:mod:`hyperhive.lifecycle.pagerelay`) that this test runs for node ``hub``,
which forwards it to the agent's real page socket (a real harness, the real
claude CLI against the scripted API). Stopping the relay while the harness
keeps running shows that nothing took the local socket instead. The relay
connects as a node agent does: a NATS user that may only hear
``hive.node.hub.>`` and answer what it hears (``allow_responses``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from playwright.async_api import Browser, expect
from websockets.asyncio.client import connect

from hyperhive.cli.embedded import EmbeddedNats, free_port
from hyperhive.common import catalog, rpc, subjects
from hyperhive.common.config import Settings, load_settings, settings_env
from hyperhive.common.errors import HiveError, NotFound
from hyperhive.common.pagesocket import PageSocket
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.page import (
    MAX_PULL_BYTES,
    EventsOpen,
    PageAnswer,
    PageCall,
    PullReply,
    PullRequest,
    PushRequest,
    SessionOpened,
    SessionRequest,
    TerminalOpen,
)
from hyperhive.lifecycle import pagerelay
from tests import rig
from tests.browser import needs_chromium, open_page
from tests.harness.conftest import (
    OPERATOR_TOKEN,
    UI_TIMEOUT_MS,
    Stack,
    agent_name,
    open_agent_page,
    page_csrf,
    running_harness,
    running_stack,
    sse_records,
    stack_settings,
)
from tests.harness.test_terminal import ROWS_JS, operator_ws, read_until, send_line
from tests.scripted_anthropic import ScriptedAnthropic

NODE = "hub"  # where the agents are (the registry's default)
VIEW = "view"  # where the dashboard believes it runs


@dataclass
class Relayed:
    stack: Stack
    nats: EmbeddedNats
    relay_nc: NATS
    relay: pagerelay.PageRelay | None

    async def start_relay(self, **kw: Any) -> pagerelay.PageRelay:
        self.relay = await pagerelay.serve(self.relay_nc, self.stack.settings, NODE, **kw)
        return self.relay

    async def stop_relay(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None


def dashboard_settings(settings: Settings, nats: EmbeddedNats) -> Settings:
    """The dashboard's: the operator's NATS user, on another node than the agents."""
    env = settings_env(settings)
    env["HIVE_NATS_SEED_FILE"] = str(nats.operator_seed)
    env["HIVE_NATS_INBOX_PREFIX"] = subjects.operator_inbox_prefix()
    env["HIVE_NODE_NAME"] = VIEW
    return load_settings(env, config_file=None)


@pytest.fixture
async def relayed(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, api: ScriptedAnthropic
) -> AsyncIterator[Relayed]:
    settings = stack_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_DASHBOARD_PORT=str(free_port()),
        HIVE_DASHBOARD_TOKEN=OPERATOR_TOKEN,
    )
    assert settings.node.name == NODE
    async with running_stack(nats_server, settings, ("broker", "lifecycle")) as stack:
        async with rig.running_service("dashboard", dashboard_settings(settings, nats_server)):
            node_seed = await asyncio.to_thread(rig.add_node_user, nats_server, NODE)
            nc = await rig.connect_as(nats_server, node_seed, subjects.inbox_prefix(f"node-{NODE}"))
            r = Relayed(stack=stack, nats=nats_server, relay_nc=nc, relay=None)
            try:
                await r.start_relay()
                yield r
            finally:
                await r.stop_relay()
                await nc.close()


async def test_page_api_travels_over_nats_and_a_gone_relay_says_so(relayed: Relayed) -> None:
    stack = relayed.stack
    name = agent_name("rp")
    info = await stack.spawn(name)
    assert info.node == NODE
    async with running_harness(stack.harness_settings(name)) as h:
        base = f"/agents/{name}/"
        async with stack.operator() as op:
            page = await op.get(base, headers={"accept": "text/html"})
            assert page.status_code == 200 and 'data-state="idle"' in page.text
            r = await op.get(base + "api/status")
            assert r.status_code == 200 and r.json()["agent"] == name
            assert r.headers["content-type"].startswith("application/json")
            assert "sandbox" in r.headers.get_list("content-security-policy")[0]
            assert r.headers["x-content-type-options"] == "nosniff"

            csrf = await page_csrf(op, name)
            with_csrf = {"X-CSRF-Token": csrf}
            r = await op.post(base + "api/prompt", json={"text": "/model x"})
            assert r.status_code == 403 and h.harness.store.model == ""  # CSRF first
            r = await op.post(base + "api/prompt", json={"text": "/model x"}, headers=with_csrf)
            assert r.status_code == 200 and r.json()["ok"] and h.harness.store.model == "x"
            r = await op.post(base + "api/prompt", json={"nottext": 1}, headers=with_csrf)
            assert r.status_code == 400 and not r.json()["ok"]  # the harness's, passed on
            r = await op.post(base + "api/cancel", json={}, headers=with_csrf)
            assert r.status_code == 200 and r.json()["cancelled"] is False

            # the live tail, through the relay: reset, backfill, the command's record, status
            records = await sse_records(
                "",
                lambda rs: any(r["sse"] == "status" for r in rs),
                client=op,
                path=base + "api/events",
                timeout=30,
            )
            assert records[0]["sse"] == "reset"
            assert any(r.get("type") == "operator" and "/model" in str(r) for r in records)
            # the operator's side went away: the dashboard closed the relay's session
            relay = relayed.relay
            assert relay is not None
            await rig.eventually(lambda: relay.sessions == 0, timeout=5, what="session closed")

            # an unknown agent: the registry does not know it, so it is looked for here
            assert (await op.get("/agents/nosuch/api/status")).status_code == 404

            # the relay goes away while the harness runs on: a clear 502, not a hang
            await relayed.stop_relay()
            started = time.monotonic()
            r = await op.get(base + "api/status")
            assert r.status_code == 502, r.text
            assert "relay of node hub does not answer" in r.text, r.text
            r = await op.get(base + "api/events")
            assert r.status_code == 502 and "relay of node hub" in r.text
            r = await op.post(base + "api/prompt", json={"text": "/model y"}, headers=with_csrf)
            assert r.status_code == 502 and h.harness.store.model == "x"
            page = await op.get(base, headers={"accept": "text/html"})
            assert page.status_code == 200 and 'data-state="offline"' in page.text
            assert time.monotonic() - started < 10


async def test_a_tail_whose_relay_dies_ends_with_a_gone_event(relayed: Relayed) -> None:
    stack = relayed.stack
    name = agent_name("rd")
    await stack.spawn(name)
    async with running_harness(stack.harness_settings(name)):
        base = f"/agents/{name}/"
        async with stack.operator() as op:
            lines: list[str] = []
            async with op.stream("GET", base + "api/events", timeout=None) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                it = r.aiter_lines()
                async with asyncio.timeout(30):
                    async for line in it:
                        lines.append(line)
                        if line.startswith("event: status"):
                            break
                assert relayed.relay is not None and relayed.relay.sessions == 1
                # the node's connection drops without a word (a crash, a cut cable)
                await relayed.relay_nc.close()
                relayed.relay = None
                died = time.monotonic()
                async with asyncio.timeout(20):
                    async for line in it:
                        lines.append(line)
                waited = time.monotonic() - died
        gone = [i for i, line in enumerate(lines) if line == "event: gone"]
        assert gone, lines[-5:]
        text = json.loads(lines[gone[-1] + 1].removeprefix("data: "))["text"]
        assert "relay of node hub does not answer" in text, text
        # within the pull's wait and grace (5 s + 3 s), not a hang
        assert waited < 12, waited


async def test_relay_sessions_hold_a_bounded_read_ahead_and_resend_lost_replies(
    relayed: Relayed,
) -> None:
    stack = relayed.stack
    await relayed.stop_relay()
    relay = await relayed.start_relay(pull_wait_s=0.5, idle_s=2.0)
    assert {_as_listed(s) for s in relay.served} == {
        e.subject for e in catalog.CATALOG if e.handler == catalog.PAGE_RELAY
    }
    name = agent_name("rs")
    await stack.spawn(name)
    op = stack.op  # the operator's NATS connection, as the dashboard has

    async def call(verb: str, payload: Any, reply: type[Any], timeout: float = 10) -> Any:
        return await rpc.request(
            op, subjects.node_page(NODE, name, verb), payload, reply, timeout=timeout
        )

    # an agent with no page socket on this node
    with pytest.raises(NotFound):
        await rpc.request(op, subjects.node_page(NODE, "nosuch", "status"), PageCall(), PageAnswer)
    async with running_harness(stack.harness_settings(name)):
        answer = await call("status", PageCall(), PageAnswer)
        assert answer.status == 200 and json.loads(answer.body)["agent"] == name

        opened = await call("events", EventsOpen(), SessionOpened)
        assert opened.session and opened.content_type == "text/event-stream"
        first = await call("pull", PullRequest(session=opened.session), PullReply)
        assert first.first == 0 and first.frames and not first.end
        again = await call("pull", PullRequest(session=opened.session), PullReply)
        # the caller said it had none: all sent again, with any that came since
        assert again.first == 0 and again.frames[: len(first.frames)] == first.frames
        have = len(again.frames)
        quiet = await call("pull", PullRequest(session=opened.session, have=have), PullReply)
        assert quiet.first == have and not quiet.end  # frames only if something happened
        with pytest.raises(HiveError):  # more than was ever sent
            await call("pull", PullRequest(session=opened.session, have=have + 99), PullReply)

        # another agent's subject cannot pull this session
        other = subjects.node_page(NODE, "other", "pull")
        with pytest.raises(NotFound):
            await rpc.request(op, other, PullRequest(session=opened.session), PullReply)

        # a session nobody pulls from ends (the dashboard went away)
        assert relay.sessions == 1
        await rig.eventually(lambda: relay.sessions == 0, timeout=15, what="idle session closed")
        with pytest.raises(NotFound):
            await call("pull", PullRequest(session=opened.session, have=have), PullReply)

        # a terminal that writes 5 MB nobody pulls: the relay holds at most its
        # read-ahead (the shell waits on its PTY), then everything arrives in order
        term = await call("terminal", TerminalOpen(cols=80, rows=24), SessionOpened)
        line = "head -c 5000000 /dev/zero | tr '\\0' y; echo; echo end-$((6*7))\r"
        await call(
            "push",
            PushRequest(session=term.session, text=json.dumps({"type": "input", "data": line})),
            Ok,
        )
        await asyncio.sleep(1.5)  # less than the idle bound
        held = relay.held()
        assert 0 < held <= pagerelay.READ_AHEAD_BYTES + pagerelay.MAX_FRAME_BYTES, held
        out, have, pulls = bytearray(), 0, 0
        async with asyncio.timeout(120):
            while b"end-42\r\n" not in out:
                reply = await call("pull", PullRequest(session=term.session, have=have), PullReply)
                assert reply.first == have and not reply.end
                for frame in reply.frames:
                    out += frame.data
                have += len(reply.frames)
                pulls += 1
                assert relay.held() <= pagerelay.READ_AHEAD_BYTES + pagerelay.MAX_FRAME_BYTES
        assert out.count(b"y") >= 5_000_000 and pulls >= 5_000_000 // MAX_PULL_BYTES
        await call("close", SessionRequest(session=term.session), Ok)
        assert relay.sessions == 0


async def test_an_agent_cannot_reach_any_page_relay(relayed: Relayed) -> None:
    stack = relayed.stack
    victim, attacker = agent_name("rv"), agent_name("ra")
    await stack.spawn(victim)
    await stack.spawn(attacker)
    seen: list[str] = []

    async def spy_on(msg: Any) -> None:
        seen.append(msg.subject)

    watcher = await rig.connect_as(relayed.nats, relayed.nats.service_seed)
    spy = await watcher.subscribe("hive.node.>", cb=spy_on)
    try:
        async with running_harness(stack.harness_settings(victim)) as h:
            async with rig.agent_connection(relayed.nats, stack.settings, attacker) as nc:
                errors: list[str] = []

                async def on_error(exc: Exception) -> None:
                    errors.append(str(exc))

                nc._error_cb = on_error
                for op, body in (
                    ("status", ""),
                    ("prompt", '{"text": "/model pwned"}'),
                    ("terminal", "{}"),
                ):
                    for node in (NODE, "*", VIEW):
                        subject = f"hive.node.{node}.page.{victim}.{op}"
                        with contextlib.suppress(
                            nats.errors.TimeoutError, nats.errors.NoRespondersError
                        ):
                            msg = await nc.request(subject, body.encode(), timeout=1)
                            pytest.fail(f"{attacker} got an answer on {subject}: {msg.data!r}")
                # a subscription to read the relay's traffic is refused too
                with contextlib.suppress(Exception):
                    await nc.subscribe("hive.node.>")
                    await nc.flush(timeout=2)
                await rig.eventually(lambda: errors, timeout=5, what="permission violations")
                assert any("permissions violation" in e.lower() for e in errors), errors
            assert h.harness.store.model == ""
            # the relay never saw the agent's requests (only the operator's below)
            assert seen == []
            answer = await rpc.request(
                stack.op, subjects.node_page(NODE, victim, "status"), PageCall(), PageAnswer
            )
            assert answer.status == 200 and seen
    finally:
        await spy.unsubscribe()
        await watcher.close()


async def test_foreign_answers_and_no_operator_headers_through_the_relay(
    relayed: Relayed,
) -> None:
    stack = relayed.stack
    name = agent_name("rh")
    await stack.spawn(name)
    # a hostile agent's own server on its socket (it may run anything there)
    sock_path = AgentPaths.of(stack.settings, name).page_socket
    heads: list[bytes] = []
    answer: dict[str, bytes] = {"type": b"application/json", "body": b'{"state": "idle"}'}

    async def fake_harness(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append((await reader.readuntil(b"\r\n\r\n")).lower())
        body = answer["body"]
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: "
            + answer["type"]
            + answer.get("extra", b"")
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(fake_harness, path=str(sock_path))
    try:
        async with stack.operator() as op:
            csrf = await page_csrf(op, name)
            r = await op.post(f"/agents/{name}/api/cancel", json={}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200 and heads
            for head in heads:
                assert OPERATOR_TOKEN.encode() not in head and csrf.encode() not in head
                assert b"cookie:" not in head and b"authorization:" not in head, head
                assert b"x-csrf-token" not in head

            answer["extra"] = b"\r\ncontent-encoding: gzip"
            r = await op.get(f"/agents/{name}/api/status")
            assert r.status_code == 502 and r.headers["content-type"].startswith("text/plain")
            del answer["extra"]

            evil = b"<html><script>alert(document.cookie)</script></html>"
            answer.update(type=b"text/html", body=evil)
            for path in ("api/status", "api/events"):
                r = await op.get(f"/agents/{name}/{path}")
                assert r.status_code == 502, (path, r.text)
                assert r.headers["content-type"].startswith("text/plain")
                assert b"<script>" not in r.content
            r = await op.get(f"/agents/{name}/", headers={"accept": "text/html"})
            assert r.status_code == 200 and b"alert(" not in r.content
    finally:
        server.close()
        await server.wait_closed()


async def test_terminal_over_the_relay(relayed: Relayed) -> None:
    stack = relayed.stack
    name = agent_name("rt")
    await stack.spawn(name)
    async with running_harness(stack.harness_settings(name)) as h:
        ws_url, csrf, good = await operator_ws(stack, name)
        async with connect(f"{ws_url}?csrf={csrf}&cols=90&rows=20", **good) as ws:
            started = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert started["type"] == "started", started
            shell_pid = started["pid"]
            assert started["cwd"] == str(h.harness.cfg.workdir)
            await send_line(ws, "echo cwd=$(pwd) size=$(stty size)")
            m = await read_until(ws, r"cwd=(\S+) size=(\d+ \d+)")
            assert m.group(1) == str(h.harness.cfg.workdir) and m.group(2) == "20 90"
            await ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 33}))
            await send_line(ws, "echo now=$(stty size)")
            assert (await read_until(ws, r"now=(\d+ \d+)")).group(1) == "33 120"
            # a burst larger than one pull (256 KiB) arrives whole and in order
            await send_line(ws, "head -c 600000 /dev/zero | tr '\\0' x; echo; echo burst-$((6*7))")
            out = ""
            async with asyncio.timeout(60):
                while "burst-42\r\n" not in out:
                    frame = await ws.recv()
                    if isinstance(frame, bytes):
                        out += frame.decode(errors="replace")
            assert out.count("x") >= 600000
            assert relayed.relay is not None and relayed.relay.sessions == 1
        # closing the browser's socket ends the shell, and the relay's session
        await rig.eventually(
            lambda: not rig.pid_alive(shell_pid), timeout=30, what="the shell ends with it"
        )
        await rig.eventually(lambda: relayed.relay.sessions == 0, timeout=10, what="session")

        # the relay gone: the terminal says so and closes
        await relayed.stop_relay()
        async with connect(f"{ws_url}?csrf={csrf}", **good) as ws:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert msg["type"] == "error" and "relay of node hub" in msg["text"], msg


@pytest.mark.browser
@needs_chromium
async def test_browser_agent_page_over_nats(
    relayed: Relayed, browser: Browser, tmp_path: Path
) -> None:
    stack = relayed.stack
    name = agent_name("rb")
    await stack.spawn(name)
    async with running_harness(stack.harness_settings(name)):
        async with open_page(
            browser, width=1100, height=800, timeout_ms=UI_TIMEOUT_MS, console_errors=False
        ) as page:
            await open_agent_page(page, stack, name)
            await expect(page.locator("#badge")).to_have_attribute("data-state", "idle")
            # the live tail: a command typed on the page comes back as its record
            await page.fill("#prompt", "/model relayed-model")
            await page.press("#prompt", "Enter")
            await expect(page.locator("#log")).to_contain_text("› /model relayed-model")
            await expect(page.locator("#chip-model")).to_contain_text("relayed-model")

            # the terminal, over the relay
            await page.click("#term-toggle")
            await expect(page.locator("#term-info")).to_contain_text("pid")
            await page.locator("#term .xterm").click()
            await page.keyboard.type("echo relayed-$((40+2))")
            await page.keyboard.press("Enter")

            async def output_line() -> bool:
                rows = [r.strip() for r in await page.evaluate(ROWS_JS)]
                return "relayed-42" in rows

            await rig.eventually(output_line, timeout=60, what="'relayed-42' read back")
            await page.screenshot(path=str(tmp_path / "relayed.png"))

            # the relay goes away: the page says so, in words, soon
            await relayed.stop_relay()
            await expect(page.locator("#log .line.err").last).to_contain_text(
                re.compile(r"relay (on|of) node hub"), timeout=20_000
            )
            await expect(page.locator("#badge")).to_have_attribute("data-state", "offline")
            await expect(page.locator("#term .xterm-rows")).to_contain_text(
                "the page relay on node hub stopped", timeout=20_000
            )
            await page.screenshot(path=str(tmp_path / "relay-gone.png"))


def _as_listed(pattern: str) -> str:
    """``hive.node.hub.page.*.status`` as the catalog writes it."""
    parts = pattern.split(".")
    parts[2], parts[4] = "<node>", "<n>"
    return ".".join(parts)


async def test_relay_status_latency_beside_the_socket(relayed: Relayed) -> None:
    """What the hop over NATS costs: ``status`` through the relay and straight
    from the socket, 200 calls each (printed with ``-s``)."""
    stack = relayed.stack
    name = agent_name("rl")
    await stack.spawn(name)
    async with running_harness(stack.harness_settings(name)):
        socket = PageSocket(stack.settings)
        subject = subjects.node_page(NODE, name, subjects.PAGE_STATUS)

        async def via_socket() -> None:
            async with socket.client(name) as client:
                assert (await client.get("/api/status")).status_code == 200

        async def via_relay() -> None:
            answer = await rpc.request(stack.op, subject, PageCall(), PageAnswer)
            assert answer.status == 200

        figures = {}
        for label, call in (("socket", via_socket), ("relay", via_relay)):
            await call()  # warm
            times = []
            for _ in range(200):
                t0 = time.perf_counter()
                await call()
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            figures[label] = (times[100], times[197])
        print(
            "status p50/p99 ms: "
            + ", ".join(f"{k} {p50:.2f}/{p99:.2f}" for k, (p50, p99) in figures.items())
        )
        assert figures["relay"][0] < 100, figures
