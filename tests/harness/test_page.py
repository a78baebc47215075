"""The agent page over HTTP: its API on the harness's unix socket (SSE live
tail and backfill), and the operator's way in, the dashboard: the page and
its proxied API behind the operator login and CSRF, the proxy's checks,
claude credentials. Nothing listens on a TCP port."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from hyperhive.common.paths import AgentPaths
from tests.harness.conftest import (
    OPERATOR_TOKEN,
    Page,
    Stack,
    agent_name,
    claude_blocks,
    page_csrf,
    running_harness,
    sse_records,
)
from tests.scripted_anthropic import ScriptedAnthropic, last_user_mentions


def _ended(turn: int):
    def check(records: list[dict]) -> bool:
        return any(r.get("type") == "turn_end" and r.get("turn") == turn for r in records)

    return check


@pytest.mark.claude
async def test_sse_live_tail_resume_and_backfill(stack: Stack, api: ScriptedAnthropic) -> None:
    name = agent_name("s")
    await stack.spawn(name)
    api.reply("streamed reply one", when=last_user_mentions("tell me one"))
    settings = stack.harness_settings(name)
    async with running_harness(settings) as h:
        page = Page(h.socket)
        assert (await page.open())["agent"] == name

        opened = asyncio.Event()
        reader = asyncio.create_task(sse_records(h.socket, _ended(1), opened=opened))
        await asyncio.wait_for(opened.wait(), 30)  # the stream is open before the prompt
        await page.prompt("tell me one")
        records = await reader
        assert records[0]["sse"] == "reset"
        kinds = [r.get("type") for r in records if r["sse"] == "turn"]
        assert {"operator", "turn_start", "claude", "turn_end", "state"} <= set(kinds)
        texts = [b["text"] for b in claude_blocks(records, "assistant", "text")]
        assert texts == ["streamed reply one"]
        assert any(r["sse"] == "status" for r in records)
        live = [r for r in records if r["sse"] == "turn"]
        assert all(r["sse_id"] and r["sse_id"].endswith(f":{r['n']}") for r in live)

        # a reconnecting EventSource resumes after the last id it saw: no reset
        middle = live[len(live) // 2]
        resumed = await sse_records(
            h.socket,
            lambda rs: any(r["sse"] == "status" for r in rs),
            headers={"Last-Event-ID": middle["sse_id"]},
        )
        assert resumed[0]["sse"] == "turn"
        assert [r["n"] for r in resumed if r["sse"] == "turn"] == [
            r.n for r in h.harness.hub.snapshot(middle["n"])
        ]
        await page.close()

    # a new harness run: its page backfills the earlier run's records from HIVE_TURNS
    async with running_harness(settings) as h2:
        records = await sse_records(h2.socket, lambda rs: any(r["sse"] == "status" for r in rs))
        old = [r for r in records if r["sse"] == "turn" and "n" not in r]
        assert any(
            r["type"] == "claude"
            and r["event"].get("type") == "assistant"
            and "streamed reply one" in str(r["event"])
            for r in old
        )
        assert len({(r["ts"], r["type"]) for r in old}) == len(old)  # no duplicates
        assert all(r["seq"] > 0 for r in old)


async def test_page_only_through_the_dashboard_with_the_operator_login(dash_stack: Stack) -> None:
    name = agent_name("g")
    info = await dash_stack.spawn(name)
    settings = dash_stack.harness_settings(name)
    async with running_harness(settings) as h:
        # the page's API is a unix socket in the agent's run dir: no TCP port
        assert h.socket == str(AgentPaths.of(dash_stack.settings, name).page_socket)
        assert stat.S_ISSOCK(os.lstat(h.socket).st_mode)
        assert info.port > 0 and _nothing_listens(info.port)

        base = f"/agents/{name}/"
        async with dash_stack.operator(login=False) as anon:
            r = await anon.get(base, headers={"accept": "text/html"})
            assert r.status_code == 401 and 'name="token"' in r.text and "badge" not in r.text
            for path in ("api/status", "api/events", "credentials"):
                assert (await anon.get(base + path)).status_code == 401, path
            r = await anon.get(base + "api/status", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 403
            # a post without the token: 403 before the proxy, and nothing changes
            for path, doc in (("api/prompt", {"text": "sneaky"}), ("api/cancel", {})):
                assert (await anon.post(base + path, json=doc)).status_code == 403
            assert h.harness.status()["queued"] == 0 and h.harness.store.model == ""

        async with dash_stack.operator() as op:
            r = await op.get(base, headers={"accept": "text/html"})
            assert r.status_code == 200
            assert f'data-base="{base}"' in r.text and "/static/agent/agent.js" in r.text
            for asset in ("agent.js", "agent.css", "terminal.js", "vendor/xterm.js"):
                assert (await op.get(f"/static/agent/{asset}")).status_code == 200, asset
            r = await op.get(base + "api/status")
            assert r.status_code == 200 and r.json()["agent"] == name
            assert r.headers["content-type"].startswith("application/json")
            assert "sandbox" in r.headers.get_list("content-security-policy")[0]
            assert r.headers["x-content-type-options"] == "nosniff"  # the guard's
            # a rebound DNS name reaches no agent page (the Host allow-list)
            for path in ("", "api/status"):
                r = await op.get(base + path, headers={"host": "rebound.example:7000"})
                assert r.status_code == 403 and "unknown Host" in r.text, path

            # CSRF: the proxy's posts need the page's token
            r = await op.post(base + "api/prompt", json={"text": "/model x"})
            assert r.status_code == 403
            r = await op.post(
                base + "api/prompt", json={"text": "/model x"}, headers={"X-CSRF-Token": "forged"}
            )
            assert r.status_code == 403 and h.harness.store.model == ""
            csrf = await page_csrf(op, name)
            r = await op.post(
                base + "api/prompt", json={"text": "/model x"}, headers={"X-CSRF-Token": csrf}
            )
            assert r.status_code == 200 and r.json()["ok"] and h.harness.store.model == "x"
            # bad bodies are refused clearly (by the harness, passed on as JSON)
            with_csrf = {"X-CSRF-Token": csrf}
            r = await op.post(base + "api/prompt", json={"nottext": 1}, headers=with_csrf)
            assert r.status_code == 400 and not r.json()["ok"]
            r = await op.post(
                base + "api/prompt",
                content=b"text=x",
                headers={**with_csrf, "content-type": "text/plain"},
            )
            assert r.status_code == 400

            # the live tail through the proxy, with the operator's session only
            records = await sse_records(
                "",
                lambda rs: any(r["sse"] == "status" for r in rs),
                client=op,
                path=base + "api/events",
            )
            assert records[0]["sse"] == "reset"


async def test_proxy_refuses_bad_names_paths_and_foreign_content(dash_stack: Stack) -> None:
    name = agent_name("p")
    await dash_stack.spawn(name)
    async with dash_stack.operator() as op:
        # invalid names never become paths; valid but unknown ones have no page
        for bad in ("Bad", "a_b", "toolongname1", "hive"):
            r = await op.get(f"/agents/{bad}/api/status")
            assert r.status_code == 400, bad
        r = await op.get("/agents/nosuch/api/status")
        assert r.status_code == 404
        # only the API's own paths, never anything else of the socket
        for path in ("api/../status", "api/credentials", "api/terminal", "api/", "api/x/../status"):
            r = await _raw_get(dash_stack, f"/agents/{name}/{path}")
            assert r[0] in (400, 404, 405), (path, r)
        for path in (
            "/agents/../api/status",
            f"/agents/{name}/api/%2e%2e/status",
            "/agents/%2e%2e/api/status",
        ):
            r = await _raw_get(dash_stack, path)
            assert r[0] in (400, 404, 405), (path, r)

    # a hostile agent's own server on its socket (it may run anything there)
    sock_path = AgentPaths.of(dash_stack.settings, name).page_socket
    heads: list[bytes] = []
    answer = {"type": b"application/json", "body": b'{"state": "idle"}'}

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
        async with dash_stack.operator() as op:
            # it sees none of the operator's credentials: no token, cookie or CSRF token
            csrf = await page_csrf(op, name)
            r = await op.post(f"/agents/{name}/api/cancel", json={}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200 and heads
            for head in heads:
                assert OPERATOR_TOKEN.encode() not in head and csrf.encode() not in head
                assert b"cookie:" not in head and b"authorization:" not in head, head
                assert b"x-csrf-token" not in head and b"x-hive-token" not in head

            # compressed (a gzip bomb would get past a cap on decoded bytes): refused
            answer["extra"] = b"\r\ncontent-encoding: gzip"
            r = await op.get(f"/agents/{name}/api/status")
            assert r.status_code == 502 and r.headers["content-type"].startswith("text/plain")
            del answer["extra"]

            # it answers text/html: none of that is passed on as HTML
            evil = b"<html><script>alert(document.cookie)</script></html>"
            answer.update(type=b"text/html", body=evil)
            for path in ("api/status", "api/events"):
                r = await op.get(f"/agents/{name}/{path}")
                assert r.status_code == 502, path
                assert r.headers["content-type"].startswith("text/plain")
                assert b"<script>" not in r.content
            # the page itself is the dashboard's: the agent's HTML is not in it
            r = await op.get(f"/agents/{name}/", headers={"accept": "text/html"})
            assert r.status_code == 200 and b"alert(" not in r.content
            assert 'data-state="offline"' in r.text
    finally:
        server.close()
        await server.wait_closed()

    # a symlink in its place (to another agent's socket, say) is never followed
    decoy_path = sock_path.parent / "decoy.sock"
    decoy_hits: list[bool] = []

    async def decoy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoy_hits.append(True)
        writer.close()

    decoy_server = await asyncio.start_unix_server(decoy, path=str(decoy_path))
    try:
        sock_path.unlink(missing_ok=True)
        sock_path.symlink_to(decoy_path)
        async with dash_stack.operator() as op:
            r = await op.get(f"/agents/{name}/api/status")
            assert r.status_code == 503 and "not a socket" in r.text
        assert not decoy_hits
    finally:
        decoy_server.close()
        await decoy_server.wait_closed()


def _nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def _raw_get(stack: Stack, target: str) -> tuple[int, bytes]:
    """A GET of ``target`` exactly as written (no client normalising ``..``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.dashboard.port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {OPERATOR_TOKEN}\r\nconnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


def _files_holding(directory: Path, secret: str) -> list[int]:
    """The modes of the files under ``directory`` that contain ``secret``."""
    return [
        stat.S_IMODE(p.stat().st_mode)
        for p in directory.rglob("*")
        if p.is_file() and secret in p.read_text(errors="ignore")
    ]


def _csrf_field(html: str) -> str:
    marker = 'name="_csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


@pytest.mark.claude
async def test_credentials_form_stores_claude_credentials(
    dash_stack: Stack, api: ScriptedAnthropic
) -> None:
    name = agent_name("l")
    await dash_stack.spawn(name)
    settings = dash_stack.harness_settings(name)
    form_url = f"/agents/{name}/credentials"
    async with running_harness(settings) as h, dash_stack.operator() as c:
        form = await c.get(form_url)
        assert form.status_code == 200 and "None set" in form.text
        csrf = _csrf_field(form.text)
        r = await c.post(form_url, data={"kind": "api_key", "secret": "sk-x"})
        assert r.status_code == 403  # no CSRF token
        r = await c.post(form_url, data={"kind": "bogus", "secret": "x", "_csrf": csrf})
        assert r.status_code == 400 and "unknown credentials kind" in r.text
        r = await c.post(
            form_url, data={"kind": "api_key", "secret": "sk-operator-42", "_csrf": csrf}
        )
        assert r.status_code == 303 and r.headers["location"] == f"{form_url}?saved=1"
        page = await c.get(f"{form_url}?saved=1")
        assert "api_key" in page.text and "sk-operator-42" not in page.text
        assert "sk-operator-42" not in (await c.get(f"/agents/{name}/api/status")).text

        assert _files_holding(Path(settings.harness.creds_dir), "sk-operator-42") == [0o600]

        # the next turn's claude uses them instead of the host's key
        await dash_stack.send(name, "who am i")
        end = await h.turn_end(1)
        assert end["outcome"] == "ok"
        assert api.requests[-1].headers.get("x-api-key") == "sk-operator-42"
        assert "sk-operator-42" not in str(h.records())
