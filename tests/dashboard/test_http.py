"""The dashboard over HTTP against the running stack: pages, CSRF, actions, SSE."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest

from hyperhive.common import rpc, subjects
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.approvals import (
    ApprovalIdRequest,
    ApprovalInfo,
    QuestionsReply,
    QuestionsRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.broker import AdminSendRequest, SendReply, SendRequest, TurnStats
from hyperhive.common.wire.lifecycle import AgentsReply, AgentsRequest, DraftInfo, Heartbeat
from hyperhive.common.wire.node import NodesReply
from hyperhive.dashboard.sections import SECTIONS
from tests import rig
from tests.dashboard.conftest import (
    Stack,
    agents,
    approval,
    ask_operator,
    commit_config,
    csrf_session,
    logged_in,
    question,
    request_apply_commit,
    set_prompt,
    spawn_agent,
    unique_name,
)

TIMEOUT = 30.0


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with logged_in(stack, TIMEOUT) as c:
        yield c


async def agent_names(stack: Stack) -> set[str]:
    reply = await rpc.request(
        stack.operator, subjects.admin("lifecycle", "list"), AgentsRequest(), AgentsReply
    )
    return {a.name for a in reply.agents}


async def test_page_shows_every_section_and_the_manager(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    for meta in SECTIONS.values():
        assert meta.title in page.text and meta.label in page.text
    assert 'id="agent-hm1nd"' in page.text
    assert "is down" not in page.text.split('id="main"')[1]  # every service answers
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_post_without_csrf_token_is_refused_and_changes_nothing(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    name = unique_name("cs")
    # no cookie, no token
    r = await client.post("/agents/spawn", data={"name": name})
    assert r.status_code == 403
    token = await csrf_session(client)  # now the client holds the CSRF cookie
    r = await client.post("/agents/spawn", data={"name": name})
    assert r.status_code == 403
    r = await client.post("/agents/spawn", data={"name": name, "_csrf": "0" * 64})
    assert r.status_code == 403
    r = await client.post("/agents/spawn", data={"name": name}, headers={"X-CSRF-Token": "f00"})
    assert r.status_code == 403
    # a token from another session (cookie) does not fit this one
    async with logged_in(stack) as other:
        foreign = await csrf_session(other)
    assert foreign != token
    r = await client.post("/agents/spawn", data={"name": name, "_csrf": foreign})
    assert r.status_code == 403
    assert name not in await agent_names(stack)

    # the same request with the page's token goes through (form field or header)
    r = await client.post(
        "/agents/spawn",
        data={"name": name, "_csrf": token},
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    assert name in await agent_names(stack)
    r = await client.post(
        f"/agents/{name}/stop",
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert "stopped" in r.json()["message"]


async def test_approve_deny_and_answer_without_csrf_are_refused_and_change_nothing(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    name = await spawn_agent(stack, "cx")
    sha = await commit_config(stack.settings, name, set_prompt("csrf"), "csrf")
    approval_id = await request_apply_commit(stack, name, sha)
    question_id = await ask_operator(stack, "csrf question?", ["yes", "no"])
    text_id = await ask_operator(stack, "csrf free text?")
    token = await csrf_session(client)
    async with logged_in(stack) as other:
        foreign = await csrf_session(other)
    posts = [
        (f"/approvals/{approval_id}/approve", {}),
        (f"/approvals/{approval_id}/deny", {"note": "forged"}),
        (f"/questions/{question_id}/answer", {"choice": "yes"}),
        (f"/questions/{text_id}/answer", {"answer": "forged"}),
    ]
    for path, data in posts:
        for forged in ({}, {"_csrf": "0" * 64}, {"_csrf": foreign}):
            r = await client.post(path, data={**data, **forged})
            assert r.status_code == 403, (path, forged, r.text)
            assert "CSRF" in r.text
        r = await client.post(path, data=data, headers={"X-CSRF-Token": "f00"})
        assert r.status_code == 403
    pending = await approval(stack, approval_id)
    assert (pending.state, pending.note, pending.tag) == ("pending", "", f"proposal/{approval_id}")
    assert (await question(stack, question_id)).answer is None
    assert (await question(stack, text_id)).answer is None

    # the page's own token goes through
    r = await client.post(
        f"/approvals/{approval_id}/deny",
        data={"note": "with the token", "_csrf": token},
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert (await approval(stack, approval_id)).state == "denied"


def _pid(stack: Stack, name: str) -> int | None:
    try:
        return int(AgentPaths.of(stack.settings, name).pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _harness_starts(stack: Stack, name: str) -> int:
    log = AgentPaths.of(stack.settings, name).log_file.read_text()
    return log.count("harness start")


async def test_kill_start_restart_update_from_the_dashboard(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    name = await spawn_agent(stack, "ac")
    token = await csrf_session(client)
    headers = {"X-CSRF-Token": token, "Accept": "application/json"}

    async def do(verb: str) -> dict:
        r = await client.post(f"/agents/{name}/{verb}", headers=headers)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["ok"] is True and "containers" in data["refresh"]
        return data

    first = _pid(stack, name)
    assert first and rig.pid_alive(first)
    assert (await do("kill"))["message"] == f"kill: {name} is stopped"
    assert (await agents(stack))[name].state == "stopped"
    assert not rig.pid_alive(first) and _pid(stack, name) is None
    card = (await client.get("/section/containers")).text
    assert f'data-agent="{name}" data-state="stopped"' in card

    assert (await do("start"))["message"] == f"start: {name} is running"
    started = _pid(stack, name)
    assert started and started != first and rig.pid_alive(started)
    assert (await agents(stack))[name].state == "running"

    starts = _harness_starts(stack, name)
    assert (await do("restart"))["message"] == f"restart: {name} is running"
    restarted = _pid(stack, name)
    assert (
        restarted
        and restarted != started
        and rig.pid_alive(restarted)
        and not rig.pid_alive(started)
    )
    assert _harness_starts(stack, name) == starts + 1

    assert (await do("update"))["message"] == f"update: {name} is running"
    updated = _pid(stack, name)
    assert updated and updated != restarted and rig.pid_alive(updated)
    assert _harness_starts(stack, name) == starts + 2
    assert (await agents(stack))[name].state == "running"


async def _set_rev(stack: Stack, name: str, rev: str) -> None:
    """Records ``name`` as built from another hyperhive revision (as after an upgrade)."""
    conn = await asyncpg.connect(stack.settings.database.url)
    try:
        await conn.execute("UPDATE lifecycle.agents SET rev = $2 WHERE name = $1", name, rev)
    finally:
        await conn.close()


def _card(page: str, name: str) -> str:
    start = page.index(f'id="agent-{name}"')
    end = page.find('<article class="card agent"', start)
    return page[start : end if end != -1 else len(page)]


async def test_a_stale_revision_is_marked_until_update(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    name = await spawn_agent(stack, "st")
    fresh = _card((await client.get("/section/containers")).text, name)
    assert "outdated" not in fresh and "test-rev-1"[:12] in fresh
    await _set_rev(stack, name, "old-rev-0")
    assert (await agents(stack))[name].stale is True
    stale = _card((await client.get("/section/containers")).text, name)
    assert 'class="rev stale"' in stale and 'class="badge stale"' in stale and "outdated" in stale
    assert "old-rev-0" in stale
    other = _card((await client.get("/")).text, subjects.MANAGER)
    assert "outdated" not in other  # only that agent

    token = await csrf_session(client)
    r = await client.post(
        f"/agents/{name}/update", headers={"X-CSRF-Token": token, "Accept": "application/json"}
    )
    assert r.status_code == 200, r.text
    rebuilt = _card((await client.get("/section/containers")).text, name)
    assert "outdated" not in rebuilt and "test-rev-1" in rebuilt


async def test_an_agent_whose_login_was_refused_is_shown_with_its_credentials_link(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """The harness's heartbeat says the API refused its credentials: its card and
    a notice above the cards say so and link its credentials form; a heartbeat
    without it clears both."""
    name = await spawn_agent(stack, "lg")
    subject = subjects.kv_subject(subjects.heartbeat_key(name))

    async def beat(login_needed: str) -> None:
        async with rig.agent_connection(stack.nats, stack.settings, name) as nc:
            beat = Heartbeat(ts=time.time(), login_needed=login_needed)
            await nc.request(subject, msgspec.json.encode(beat), timeout=10)

    await beat("401 invalid x-api-key")
    page = (await client.get("/section/containers")).text
    notice = page[page.index('data-role="logins-needed"') :].split("</p>", 1)[0]
    assert f'href="/agents/{name}/credentials"' in notice
    assert subjects.MANAGER not in notice  # only the agent whose login was refused
    card = _card(page, name)
    assert "login needed" in card and "401 invalid x-api-key" in card
    assert "login needed" not in _card(page, subjects.MANAGER)

    await beat("")
    page = (await client.get("/section/containers")).text
    assert 'data-role="logins-needed"' not in page
    assert "login needed" not in _card(page, name)


async def test_a_failed_deploy_shows_its_build_error(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    name = await spawn_agent(stack, "fd")
    sha = await commit_config(
        stack.settings, name, lambda text: text.replace('model = ""', "model = 5"), "bad model"
    )
    approval_id = await request_apply_commit(stack, name, sha)
    token = await csrf_session(client)
    r = await client.post(
        f"/approvals/{approval_id}/approve",
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert r.status_code == 200, r.text
    info = await rig.eventually(
        lambda: _resolved(stack, approval_id), timeout=TIMEOUT, what="the deploy fails"
    )
    assert info.state == "failed" and info.error
    page = (await client.get("/section/approvals")).text
    start = page.index(f'id="resolved-{approval_id}"')
    row = page[start : page.index("</li>", start)]
    assert 'data-state="failed"' in row
    assert f'<code class="tag">failed/{approval_id}</code>' in row
    assert '<details class="build-error"><summary>build error</summary>' in row
    error_line = info.error.strip().splitlines()[-1]
    assert html.escape(error_line, quote=False) in row or error_line in row
    assert "model" in row
    assert f'id="approval-{approval_id}"' not in page  # no longer pending


async def _resolved(stack: Stack, approval_id: int):
    info = await approval(stack, approval_id)
    return info if info.state not in ("pending", "approved") else None


async def test_sections_in_page_order_with_drafts_between_kept_and_approvals(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/")).text
    main = page[page.index('id="main"') :]
    positions = [main.index(f'<section id="{name}"') for name in SECTIONS]
    assert positions == sorted(positions)
    kept, drafts, approvals = (
        main.index(f'<section id="{n}"') for n in ("kept", "drafts", "approvals")
    )
    assert kept < drafts < approvals
    # and nothing else in between
    assert (
        "<section" not in main[kept + 1 : drafts] and "<section" not in main[drafts + 1 : approvals]
    )


async def test_action_errors_come_back_with_their_status(client: httpx.AsyncClient) -> None:
    token = await csrf_session(client)
    headers = {"X-CSRF-Token": token, "Accept": "application/json"}
    r = await client.post("/agents/nosuch/start", headers=headers)
    assert r.status_code == 404
    assert r.json()["ok"] is False
    r = await client.post("/agents/spawn", data={"name": "Bad Name!"}, headers=headers)
    assert r.status_code == 400
    assert "invalid agent name" in r.json()["message"]
    # a browser without JS gets a page, not JSON
    r = await client.post("/agents/nosuch/start", data={"_csrf": token})
    assert r.status_code == 404
    assert "text/html" in r.headers["content-type"]
    assert "3RR0R" in r.text


async def sse_events(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str] | None = None,
    opened: asyncio.Event | None = None,
) -> AsyncIterator[tuple[str, str, dict]]:
    """(id, event, data) of an SSE stream, as they arrive; ``opened`` is set
    once the stream answered."""
    async with client.stream("GET", url, headers=headers or {}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        if opened is not None:
            opened.set()
        fields: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line == "":
                if "data" in fields:
                    yield (
                        fields.get("id", ""),
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                fields = {}
            elif not line.startswith(":") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()


async def first_message(
    client: httpx.AsyncClient,
    url: str,
    body: str,
    headers: dict[str, str] | None = None,
    opened: asyncio.Event | None = None,
) -> tuple[str, dict]:
    async for seq, event, data in sse_events(client, url, headers, opened):
        if event == "message" and data["body"] == body:
            return seq, data
    raise AssertionError("stream ended")


async def test_message_flow_streams_live_and_backfills(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    assert stack.manager is not None
    body = f"flow test {time.time()}"

    async def send() -> SendReply:
        return await rpc.request(
            stack.manager,
            subjects.agent(subjects.MANAGER, "send"),
            SendRequest(to=subjects.OPERATOR, body=body),
            SendReply,
        )

    opened = asyncio.Event()
    watcher = asyncio.create_task(
        first_message(client, "/flow/stream?agent=hm1nd", body, opened=opened)
    )
    await asyncio.wait_for(opened.wait(), TIMEOUT)  # open before the send: it comes live
    sent = await send()
    seq, data = await asyncio.wait_for(watcher, TIMEOUT)
    assert data["id"] == sent.id
    assert data["sender"] == "hm1nd" and data["recipient"] == "operator"

    # a new client is backfilled with it
    seq2, _ = await asyncio.wait_for(first_message(client, "/flow/stream", body), TIMEOUT)
    assert seq2 == seq

    # a reconnect with Last-Event-ID gets only what came after
    later = f"after {body}"
    await rpc.request(
        stack.manager,
        subjects.agent(subjects.MANAGER, "send"),
        SendRequest(to=subjects.OPERATOR, body=later),
        SendReply,
    )
    async with asyncio.timeout(TIMEOUT):
        async for _, event, data in sse_events(client, "/flow/stream", {"Last-Event-ID": seq}):
            if event == "message":
                assert data["body"] == later  # not the earlier one again
                break


async def test_agent_panels_show_config_inbox_and_logs(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    config = await client.get("/agents/hm1nd/config")
    assert config.status_code == 200
    assert "agent.toml" in config.text and "allowed_tools" in config.text
    # agent.nix, the config's entry point, is shown beside it
    assert "<code>agent.nix</code>" in config.text
    assert "environment.systemPackages" in config.text
    # the inbox panel lists a pending message with its sender, escaped
    name = await spawn_agent(stack, "ib")  # its harness (sleep) never takes it
    assert "Inbox empty" in (await client.get(f"/agents/{name}/inbox")).text
    body = f"<b>pending for {name}</b> & more"
    sent = await rpc.request(
        stack.operator,
        subjects.admin("broker", "send"),
        AdminSendRequest(to=name, body=body),
        SendReply,
    )
    inbox = await client.get(f"/agents/{name}/inbox")
    assert inbox.status_code == 200
    assert f'data-id="{sent.id}"' in inbox.text
    assert html.escape(body, quote=False) in inbox.text and body not in inbox.text
    assert '<span class="from">operator</span>' in inbox.text
    first = (await client.get("/agents/hm1nd/logs")).json()
    assert any("harness start" in line for line in first["lines"])
    assert first["after"] is not None  # where to follow from
    more = await client.get("/agents/hm1nd/logs", params={"after": first["after"]})
    assert more.json()["lines"] == []  # nothing new since


async def test_telemetry_series_from_turn_stats(stack: Stack, client: httpx.AsyncClient) -> None:
    assert stack.manager is not None
    before = (await client.get("/api/usage")).json()["totals"].get("hm1nd", {})
    now = time.time()
    for i, (duration, code) in enumerate(((1200.0, 0), (3400.0, 0), (800.0, 1))):
        stats = TurnStats(
            input_tokens=100 * (i + 1),
            cache_read_tokens=1000,
            model_calls=2,
            cost_usd=0.25,
            ts=now - 30 + i,
            duration_ms=duration,
            exit_code=code,
            tool_calls={"Read": 2, "mcp__hyperhive__send": 1},
            messages_sent=1,
            messages_sent_to={"peer" if i else "operator": 1},
            compact_retry=i == 1,
            inbox_depth=i,
            notes_bytes=2048 * (i + 1),
        )
        await rpc.publish(stack.manager, subjects.agent(subjects.MANAGER, "stats"), stats)

    async def three_turns() -> dict | None:
        r = await client.get("/api/stats", params={"agent": "hm1nd", "window": 3600})
        data = r.json()
        return data if data.get("turns", 0) >= 3 else None

    data = await rig.eventually(three_turns, timeout=TIMEOUT, what="3 turns charted")
    charts = data["charts"]
    assert charts["tool_calls"]["series"]["tool calls/turn"][-3:] == [3, 3, 3]
    codes = charts["exit_codes"]["series"]
    assert (sum(codes["exit 1"]), sum(codes["ok after compact retry"])) == (1, 1)
    assert max(v for v in charts["duration"]["series"]["p95 s"] if v is not None) >= 3.4
    assert data["since_last_turn_s"] is not None
    sent = charts["messages"]["series"]
    assert (sum(sent["sent → peer"]), sum(sent["sent → operator"])) == (2, 1)
    tools = charts["tools"]["series"]
    assert (sum(tools["Read"]), sum(tools["send"])) == (6, 3)  # mcp__hyperhive__ dropped
    assert charts["notes"]["series"]["notes KiB"][-3:] == [2, 4, 6]
    assert sum(charts["tokens"]["series"]["input"]) >= 600
    assert data["totals"]["model_calls"] >= 6 and data["totals"]["cost_usd"] >= 0.75

    # per agent and UTC day: today's row and the totals grew by what was published
    usage = (await client.get("/api/usage")).json()
    after = usage["totals"]["hm1nd"]
    grew = {k: after[k] - before.get(k, 0) for k in ("turns", "input_tokens", "model_calls")}
    assert grew == {"turns": 3, "input_tokens": 600, "model_calls": 6}
    assert after["cache_read_tokens"] - before.get("cache_read_tokens", 0) == 3000
    assert after["cost_usd"] - before.get("cost_usd", 0) == pytest.approx(0.75)
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    assert any(d["agent"] == "hm1nd" and d["day"] == today for d in usage["days"])
    r = await client.get("/api/stats", params={"agent": "../etc"})
    assert r.status_code == 400


async def test_kept_state_can_be_respawned_and_purged(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    token = await csrf_session(client)
    headers = {"X-CSRF-Token": token, "Accept": "application/json"}
    name = unique_name("kp")
    assert (await client.post("/agents/spawn", data={"name": name}, headers=headers)).is_success
    # the agent kept notes (an empty state dir is no state to keep)
    (AgentPaths.of(stack.settings, name).state / "notes.md").write_text("remember me\n")
    r = await client.post(f"/agents/{name}/destroy", headers=headers)  # state kept
    assert r.status_code == 200, r.text
    kept = await client.get("/section/kept")
    assert f'data-agent="{name}"' in kept.text
    assert "on hub · destroyed" in kept.text  # the host that keeps it
    assert f'id="agent-{name}"' not in (await client.get("/section/containers")).text

    r = await client.post(f"/kept/{name}/respawn", headers=headers)
    assert r.status_code == 200, r.text
    assert f'id="agent-{name}"' in (await client.get("/section/containers")).text
    assert f'data-agent="{name}"' not in (await client.get("/section/kept")).text

    r = await client.post(f"/agents/{name}/destroy", headers=headers)
    assert r.status_code == 200
    r = await client.post(f"/kept/{name}/purge", headers=headers)
    assert r.status_code == 200, r.text
    assert f'data-agent="{name}"' not in (await client.get("/section/kept")).text


async def test_drafts_section_lists_a_two_step_spawn(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    assert stack.manager is not None
    name = unique_name("dr")
    await rpc.request(
        stack.manager,
        subjects.manager_tool("request_spawn_draft"),
        SpawnToolRequest(name=name),
        DraftInfo,
        timeout=TIMEOUT,
    )
    drafts = await client.get("/section/drafts")
    assert f'data-agent="{name}"' in drafts.text
    assert f'id="agent-{name}"' not in (await client.get("/section/containers")).text


async def test_secrets_in_a_proposal_are_masked(stack: Stack, client: httpx.AsyncClient) -> None:
    assert stack.manager is not None
    token = await csrf_session(client)
    name = unique_name("sc")
    r = await client.post(
        "/agents/spawn",
        data={"name": name},
        headers={"X-CSRF-Token": token, "Accept": "application/json"},
    )
    assert r.is_success, r.text
    secret = "sk-very-secret-value-123"
    tools = f'\n[mcp_servers.tools]\ncommand = "tools-mcp"\nenv = {{ API_TOKEN = "{secret}" }}\n'
    sha = await commit_config(stack.settings, name, lambda text: text + tools, "add tools")
    approval_id = await request_apply_commit(stack, name, sha)
    page = (await client.get("/section/approvals")).text
    assert f'id="approval-{approval_id}"' in page
    assert "API_TOKEN" in page and "tools-mcp" in page  # the change is visible
    assert secret not in page  # its value is not
    assert secret not in (await client.get("/")).text
    # a hunk deep in an env table (its header far above) is masked as well
    regions = "".join(f'REGION_{i} = "eu-west-{i}"\n' for i in range(12))
    sha = await commit_config(
        stack.settings,
        name,
        lambda text: (
            text + f'\n[mcp_servers.geo]\ncommand = "geo"\n[mcp_servers.geo.env]\n{regions}'
        ),
        "env",
    )
    env_id = await request_apply_commit(stack, name, sha)
    deployed = await rpc.request(
        stack.operator,
        subjects.admin("approvals", "approve"),
        ApprovalIdRequest(id=env_id),
        ApprovalInfo,
        timeout=TIMEOUT,
    )
    assert deployed.state == "deployed", deployed.error
    sha = await commit_config(
        stack.settings, name, lambda text: text.replace("eu-west-9", "eu-north-9"), "move"
    )
    await request_apply_commit(stack, name, sha)
    page = (await client.get("/section/approvals")).text
    assert "REGION_9" in page and "eu-west-" not in page and "eu-north-9" not in page
    # the same rule for a message in the agent's inbox panel
    await rpc.request(
        stack.operator,
        subjects.admin("broker", "send"),
        AdminSendRequest(to=name, body=f"use ANTHROPIC_API_KEY={secret} for now"),
        SendReply,
    )
    inbox = (await client.get(f"/agents/{name}/inbox")).text
    assert "ANTHROPIC_API_KEY" in inbox and secret not in inbox
    # the hive's telemetry counts it as waiting for the operator
    hive = (await client.get("/api/stats/hive", params={"window": 3600})).json()
    assert hive["charts"]["approval_queue"]["series"]["waiting approvals"][-1] >= 1


async def test_checkbox_and_free_text_questions(stack: Stack, client: httpx.AsyncClient) -> None:
    assert stack.manager is not None
    multi = await ask_operator(stack, "which tools?", ["git", "nix", "curl"], True)
    text = await ask_operator(stack, "what should the next agent be called?", None, False)
    page = (await client.get("/section/questions")).text
    assert page.count('name="choice"') >= 3 and 'type="checkbox"' in page
    assert f'id="answer-{text}"' in page  # a textarea

    token = await csrf_session(client)
    headers = {"X-CSRF-Token": token, "Accept": "application/json"}
    r = await client.post(
        f"/questions/{multi}/answer", data={"choice": ["git", "nix"]}, headers=headers
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/questions/{text}/answer", data={"answer": "sc0ut"}, headers=headers)
    assert r.status_code == 200, r.text
    r = await client.post(f"/questions/{text}/answer", data={"answer": "again"}, headers=headers)
    assert r.status_code == 409  # already answered

    reply = await rpc.request(
        stack.operator, subjects.admin("approvals", "questions"), QuestionsRequest(), QuestionsReply
    )
    answers = {q.id: q.answer for q in reply.questions}
    assert answers[multi] == ["git", "nix"]
    assert answers[text] == ["sc0ut"]
    history = (await client.get("/section/questions")).text
    assert f'id="answered-{multi}"' in history and "git, nix" in history


async def test_a_foreign_host_name_is_refused(stack: Stack, client: httpx.AsyncClient) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 gets no page and no CSRF pair."""
    r = await client.get("/", headers={"Host": f"evil.example:{stack.settings.dashboard.port}"})
    assert r.status_code == 403
    assert "csrf-token" not in r.text and "set-cookie" not in r.headers
    r = await client.post("/agents/spawn", headers={"Host": "evil.example"}, data={"name": "x"})
    assert r.status_code == 403
    r = await client.get("/", headers={"Host": f"localhost:{stack.settings.dashboard.port}"})
    assert r.status_code == 200


async def test_changes_between_render_and_stream_reach_the_page(stack: Stack) -> None:
    """A question asked after the page was rendered but before its /events
    stream opened still reaches the page: the stream starts after the last
    change the rendered sections show."""
    async with logged_in(stack) as client:
        page = await client.get("/")
        seen = re.search(r'data-seen="(\d+)"', page.text)
        assert seen, "the page says which change it shows last"
        qid = await ask_operator(stack, "asked while the page was loading?")

        async def hub_has_it() -> bool:  # the change is in the dashboard, not in flight
            again = re.search(r'data-seen="(\d+)"', (await client.get("/")).text)
            return again is not None and int(again.group(1)) > int(seen.group(1))

        await rig.eventually(hub_has_it, timeout=TIMEOUT, what="the dashboard sees the change")

        async def question_change() -> dict:
            async for _id, event, data in sse_events(client, f"/events?after={seen.group(1)}"):
                if (
                    event == "change"
                    and data["kind"].startswith("question.")
                    and (str(qid) in json.dumps(data))
                ):
                    return data
            raise AssertionError("stream ended")

        change = await asyncio.wait_for(question_change(), 10)
        assert change["seq"] > int(seen.group(1))
        # a cursor that is not a number is ignored: the stream starts at now
        async with client.stream("GET", "/events?after=junk") as r:
            assert r.status_code == 200


async def test_nodes_section_lists_each_host_with_its_agents_load_and_revision(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    await spawn_agent(stack, "nd")
    listed = await rpc.request(
        stack.operator, subjects.admin("lifecycle", "nodes"), Empty(), NodesReply
    )
    hub = next(n for n in listed.nodes if n.name == subjects.HUB_NODE)
    body = (await client.get("/section/nodes")).text
    row = body[body.index(f'data-node="{subjects.HUB_NODE}"') :].split("</li>")[0]
    assert 'data-state="up"' in row, row
    assert f'<span data-role="agents">{hub.agents} agents</span>' in row, row
    assert hub.agents >= 2  # the manager and this test's agent
    assert f"load {hub.load1:.2f}" in row and hub.revision[:12] in row, row
    page = (await client.get("/")).text
    assert '<section id="nodes"' in page and "N0D3S" in page
