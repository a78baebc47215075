"""The agent page over HTTP: SSE live tail and backfill, operator token, CSRF,
claude credentials."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import httpx
import pytest

from tests.harness.conftest import (
    Page,
    Stack,
    agent_name,
    claude_blocks,
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
        page = Page(h.url)
        html = await page.open()
        assert name in html and 'id="badge"' in html and "/static/agent.js" in html
        for asset in ("/static/agent.js", "/static/agent.css"):
            assert (await page.client.get(asset)).status_code == 200

        reader = asyncio.create_task(sse_records(h.url, _ended(1)))
        await asyncio.sleep(0)  # the stream opens before the prompt
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
            h.url,
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
        records = await sse_records(h2.url, lambda rs: any(r["sse"] == "status" for r in rs))
        old = [r for r in records if r["sse"] == "turn" and "n" not in r]
        assert any(
            r["type"] == "claude"
            and r["event"].get("type") == "assistant"
            and "streamed reply one" in str(r["event"])
            for r in old
        )
        assert len({(r["ts"], r["type"]) for r in old}) == len(old)  # no duplicates
        assert all(r["seq"] > 0 for r in old)


async def test_operator_token_and_csrf(stack: Stack) -> None:
    name = agent_name("g")
    await stack.spawn(name)
    settings = stack.harness_settings(name, HIVE_HARNESS_TOKEN="s3cret-token")
    async with running_harness(settings) as h:
        async with httpx.AsyncClient(base_url=h.url, timeout=10) as c:
            r = await c.get("/", headers={"accept": "text/html"})
            assert r.status_code == 401 and 'name="token"' in r.text
            assert (await c.get("/events")).status_code == 401
            assert (await c.get("/status")).status_code == 401
            r = await c.get("/status", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 403
            r = await c.get("/status", headers={"Authorization": "Bearer s3cret-token"})
            assert r.status_code == 200 and r.json()["agent"] == name
            assert (await c.get("/static/agent.css")).status_code == 200  # public asset

            # a state-changing request without the token: 403, and nothing changes
            # (even with the page's valid CSRF pair, which the public form hands out)
            csrf = _csrf_field((await c.get("/auth")).text)
            for path, doc in (("/prompt", {"text": "sneaky"}), ("/prompt", {"text": "/model x"})):
                r = await c.post(path, json=doc, headers={"X-CSRF-Token": csrf})
                assert r.status_code == 403 and "operator token required" in r.text
            r = await c.post("/cancel", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 403
            assert h.harness.status()["queued"] == 0 and h.harness.store.model == ""

            # the token form sets a session cookie (not the token itself)
            form = await c.get("/auth")
            csrf = _csrf_field(form.text)
            r = await c.post("/auth", data={"token": "s3cret-token", "_csrf": csrf})
            assert r.status_code == 303
            assert "s3cret-token" not in r.headers.get("set-cookie", "")
            r = await c.get("/", headers={"accept": "text/html"})
            assert r.status_code == 200

        # CSRF: a POST without the page's token changes nothing
        page = Page(h.url, token="s3cret-token")
        await page.open()
        r = await page.client.post("/prompt", json={"text": "sneaky"})
        assert r.status_code == 403
        r = await page.client.post(
            "/prompt", json={"text": "/model x"}, headers={"X-CSRF-Token": "forged"}
        )
        assert r.status_code == 403
        assert h.harness.status()["queued"] == 0 and h.harness.store.model == ""
        # bad bodies are refused clearly
        r = await page.post("/prompt", {"nottext": 1})
        assert r.status_code == 400
        r = await page.post("/prompt", {"text": "   "})
        assert r.status_code == 400
        await page.close()


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
async def test_login_stores_claude_credentials(stack: Stack, api: ScriptedAnthropic) -> None:
    name = agent_name("l")
    await stack.spawn(name)
    settings = stack.harness_settings(name)
    async with running_harness(settings) as h:
        async with httpx.AsyncClient(base_url=h.url, timeout=10) as c:
            form = await c.get("/login")
            assert form.status_code == 200 and "None set" in form.text
            csrf = _csrf_field(form.text)
            r = await c.post("/login", data={"kind": "bogus", "secret": "x", "_csrf": csrf})
            assert r.status_code == 400 and "unknown credentials kind" in r.text
            r = await c.post(
                "/login", data={"kind": "api_key", "secret": "sk-operator-42", "_csrf": csrf}
            )
            assert r.status_code == 303
            page = await c.get("/login?saved=1")
            assert "api_key" in page.text and "sk-operator-42" not in page.text
            assert "sk-operator-42" not in (await c.get("/status")).text

        assert _files_holding(Path(settings.harness.creds_dir), "sk-operator-42") == [0o600]

        # the next turn's claude uses them instead of the host's key
        await stack.send(name, "who am i")
        end = await h.turn_end(1)
        assert end["outcome"] == "ok"
        assert api.requests[-1].headers.get("x-api-key") == "sk-operator-42"
        assert "sk-operator-42" not in str(h.records())
