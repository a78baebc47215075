"""The operator token: every page, action and SSE stream needs it; a dashboard
without one does not start unless explicitly waived, and then refuses every
operator action from a non-loopback address."""

from __future__ import annotations

import asyncio
import html
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hyperhive.approvals import gitops
from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import ConfigError
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.broker import HistoryReply, InboxRequest
from hyperhive.dashboard.app import create_app
from hyperhive.dashboard.routes_app import PUBLIC_PATHS
from tests import rig
from tests.dashboard.conftest import (
    CSRF_META,
    Stack,
    agents,
    approval,
    ask_operator,
    commit_config,
    csrf_session,
    logged_in,
    question,
    request_apply_commit,
    running_stack,
    set_prompt,
    spawn_agent,
    stack_settings,
    unique_name,
)

TOKEN = "s3cr3t-operator-token-for-tests"
LABEL = "alice laptop"
BY = f'operator via dashboard (token "{LABEL}")'


@pytest.fixture(scope="module")
async def guarded(
    nats_server: EmbeddedNats,
    postgres_server: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """The stack with a dashboard that requires the operator token (from a file)."""
    database_url = await rig.create_database(postgres_server.url)
    home = tmp_path_factory.mktemp("dash-token")
    token_file = home / "dashboard.token"
    token_file.write_text(TOKEN + "\n")
    settings = stack_settings(
        nats_server,
        database_url,
        home,
        HIVE_DASHBOARD_TOKEN_FILE=str(token_file),
        HIVE_DASHBOARD_TOKEN_LABEL=LABEL,
    )
    async with running_stack(nats_server, settings) as running:
        yield running


@pytest.fixture
async def client(guarded: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=guarded.url, timeout=30) as c:
        yield c


async def test_pages_and_streams_need_the_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 401
    assert TOKEN not in r.text
    r = await client.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 401
    assert 'action="/login"' in r.text  # a browser gets the login form
    for path in ("/section/containers", "/agents/hm1nd/config", "/api/stats?agent=hm1nd"):
        assert (await client.get(path)).status_code == 401, path
    async with client.stream("GET", "/flow/stream") as r:
        assert r.status_code == 401
    async with client.stream("GET", "/events") as r:
        assert r.status_code == 401
    # a wrong token is refused outright
    r = await client.get("/", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    r = await client.get("/", params={"token": "wrong"})
    assert r.status_code == 403
    # static assets hold no data
    assert (await client.get("/static/hive.css")).status_code == 200


async def test_the_token_as_header_or_query_opens_pages_and_sse(client: httpx.AsyncClient) -> None:
    r = await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert TOKEN not in r.text  # never rendered
    r = await client.get("/section/containers", headers={"X-Hive-Token": TOKEN})
    assert r.status_code == 200 and "hm1nd" in r.text
    async with client.stream("GET", "/flow/stream", params={"token": TOKEN}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")


async def test_post_without_the_token_is_refused_with_403_and_changes_nothing(
    guarded: Stack, client: httpx.AsyncClient
) -> None:
    """Issue 7: a form post without the operator token is refused with 403, even
    with a valid CSRF pair (from the public login page)."""
    page = await client.get("/login")
    match = CSRF_META.search(page.text)
    assert match
    csrf = match.group(1)
    name = unique_name("tk")
    victim = await spawn_agent(guarded, "tv")
    sha = await commit_config(guarded.settings, victim, set_prompt("be quiet"), "be quiet")
    approval_id = await request_apply_commit(guarded, victim, sha)
    question_id = await ask_operator(guarded, "token question?", ["yes", "no"])
    posts = [
        ("/agents/spawn", {"name": name}),
        (f"/agents/{victim}/stop", {}),
        (f"/agents/{victim}/destroy", {"purge": "on"}),
        (f"/approvals/{approval_id}/approve", {}),
        (f"/approvals/{approval_id}/deny", {"note": "no"}),
        (f"/questions/{question_id}/answer", {"choice": "yes"}),
        ("/messages/send", {"to": victim, "body": "sneaky"}),
        ("/logout", {}),
    ]
    for path, data in posts:
        for extra in ({}, {"Authorization": "Bearer nope"}):
            r = await client.post(
                path,
                data={**data, "_csrf": csrf},
                headers={"X-CSRF-Token": csrf, "Accept": "application/json", **extra},
            )
            assert r.status_code == 403, (path, extra, r.status_code, r.text)
            assert "operator token" in r.text
    # a browser form post without JS gets 403 too, not the login page
    r = await client.post(
        "/agents/spawn", data={"name": name, "_csrf": csrf}, headers={"Accept": "text/html"}
    )
    assert r.status_code == 403

    registry = await agents(guarded)
    assert name not in registry
    assert registry[victim].state == "running"
    assert (await approval(guarded, approval_id)).state == "pending"
    assert (await question(guarded, question_id)).answer is None
    inbox = await rpc.request(
        guarded.operator,
        subjects.admin("broker", "inbox"),
        InboxRequest(agent=victim),
        HistoryReply,
    )
    assert not inbox.messages


async def test_login_sets_a_session_cookie_that_is_not_the_token(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/login")
    token = CSRF_META.search(page.text)
    assert token
    # login itself is CSRF-protected
    r = await client.post("/login", data={"token": TOKEN})
    assert r.status_code == 403
    r = await client.post("/login", data={"token": "wrong", "_csrf": token.group(1)})
    assert r.status_code == 403
    assert "hive_session" not in client.cookies
    r = await client.post("/login", data={"token": TOKEN, "_csrf": token.group(1)})
    assert r.status_code == 303
    session = client.cookies.get("hive_session")
    assert session and TOKEN not in session
    assert "httponly" in r.headers["set-cookie"].lower()
    r = await client.get("/")
    assert r.status_code == 200
    assert "Log out" in r.text


def _routes(settings: Settings) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route the dashboard serves, with sample
    path parameters: a route added later is covered without naming it here."""
    app = create_app(settings, None, None)  # type: ignore[arg-type]
    samples = {"int": "1", "str": "hm1nd", "path": "x"}
    out = []
    for route in app.routes:
        methods = getattr(route, "methods", None)
        public = route.path.startswith(("/static/", "/login")) or route.path in PUBLIC_PATHS
        if not methods or public:
            continue
        path = re.sub(r"\{[a-z_]+:([a-z]+)\}", lambda m: samples[m.group(1)], route.path)
        out += [(m, path) for m in sorted(methods) if m not in ("HEAD", "OPTIONS")]
    return out


async def test_every_route_without_the_token_is_refused(
    guarded: Stack, client: httpx.AsyncClient
) -> None:
    routes = _routes(guarded.settings)
    assert ("GET", "/events") in routes and ("POST", "/approvals/1/approve") in routes
    assert len(routes) >= 20
    for method, path in routes:
        for headers in ({}, {"Accept": "text/html"}, {"Accept": "text/event-stream"}):
            async with client.stream(method, path, headers=headers) as r:
                body = (await r.aread()).decode()
            expected = 401 if method == "GET" else 403
            assert r.status_code == expected, (method, path, headers, r.status_code, body[:200])
            assert TOKEN not in body
            if method == "GET" and headers.get("Accept") == "text/html":
                assert 'action="/login"' in body, path  # a browser gets the login form
        # a wrong token, however given, is refused too
        for wrong in (
            {"Authorization": "Bearer wrong"},
            {"X-Hive-Token": "wrong"},
            {"Cookie": "hive_session=" + "0" * 64},
        ):
            r = await client.request(method, path, headers=wrong)
            assert r.status_code in (401, 403), (method, path, wrong, r.status_code)


async def test_the_login_url_sets_a_session_and_drops_the_token_from_the_address(
    guarded: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=guarded.url, timeout=30) as c:
        r = await c.get("/login", params={"token": "wrong"})
        assert r.status_code == 403 and "wrong token" in r.text
        assert "hive_session" not in c.cookies
        r = await c.get("/login", params={"token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert r.headers["cache-control"] == "no-store"
        session = c.cookies.get("hive_session")
        assert session and TOKEN not in session
        page = await c.get("/")
        assert page.status_code == 200 and TOKEN not in page.text
        async with c.stream("GET", "/events") as r:
            assert r.status_code == 200
        # logging out ends it
        csrf = CSRF_META.search(page.text)
        assert csrf
        await c.post("/logout", data={"_csrf": csrf.group(1)})
        assert (await c.get("/")).status_code == 401


async def test_a_scraped_csrf_token_without_the_operator_token_approves_nothing(
    guarded: Stack, client: httpx.AsyncClient
) -> None:
    """Issue 13: an agent on the host curls the dashboard, scrapes the CSRF
    token and posts the approval of its own change."""
    victim = await spawn_agent(guarded, "sc")
    sha = await commit_config(guarded.settings, victim, set_prompt("self-approved"), "mine")
    approval_id = await request_apply_commit(guarded, victim, sha)
    page = await client.get("/", headers={"Accept": "text/html"})  # the login form
    match = CSRF_META.search(page.text)
    assert page.status_code == 401 and match
    csrf = match.group(1)
    for path in (f"/approvals/{approval_id}/approve", f"/approvals/{approval_id}/deny"):
        r = await client.post(path, data={"_csrf": csrf}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403, (path, r.text)
    row = await approval(guarded, approval_id)
    assert (row.state, row.decided_by) == ("pending", "")
    applied = AgentPaths.of(guarded.settings, victim).applied
    assert not gitops.tag_sha(applied, f"deployed/{approval_id}")


async def test_a_dashboard_decision_is_attributed_to_the_token_label(guarded: Stack) -> None:
    name = await spawn_agent(guarded, "ab")
    sha = await commit_config(guarded.settings, name, set_prompt("attributed"), "attributed")
    approval_id = await request_apply_commit(guarded, name, sha)
    question_id = await ask_operator(guarded, "attributed question?", ["yes", "no"])
    async with logged_in(guarded) as c:
        csrf = await csrf_session(c)
        headers = {"X-CSRF-Token": csrf, "Accept": "application/json"}
        r = await c.post(f"/approvals/{approval_id}/approve", headers=headers)
        assert r.status_code == 200 and r.json()["ok"], r.text
        r = await c.post(f"/questions/{question_id}/answer", data={"choice": "no"}, headers=headers)
        assert r.status_code == 200 and r.json()["ok"], r.text
        row = await approval(guarded, approval_id)
        assert (row.state, row.decided_by) == ("deployed", BY)
        assert row.decided_at is not None
        assert (await question(guarded, question_id)).answered_by == BY
        # the page shows who and the clock time next to the resolved approval
        section = (await c.get("/section/approvals")).text
        item = re.search(rf'<li class="row" id="resolved-{approval_id}".*?</li>', section, re.S)
        assert item, section[:2000]
        text = html.unescape(item.group(0))
        assert f"approved by {BY} at" in re.sub(r"<[^>]+>", "", text)
        assert time.strftime("%H:%M", time.localtime(row.decided_at)) in text
        answered = html.unescape((await c.get("/section/questions")).text)
        assert BY in answered
    message = gitops.tag_message(
        AgentPaths.of(guarded.settings, name).applied, f"deployed/{approval_id}"
    )
    assert f"Decided-by: {BY}" in message.splitlines()
    assert TOKEN not in message


async def test_no_token_stops_the_dashboard_with_one_line(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path
) -> None:
    settings = stack_settings(nats_server, database_url, hive_home, HIVE_DASHBOARD_TOKEN_FILE="")
    with pytest.raises(ConfigError, match="no operator token"):
        async with rig.running_service("dashboard", settings):
            pass
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env.update(HIVE_HOME=str(hive_home / "empty"), HIVE_NATS_URL="nats://127.0.0.1:1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hyperhive.cli.main",
        "serve",
        "dashboard",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("hive serve dashboard: no operator token: set dashboard.token_file")
    assert "HIVE_DASHBOARD_INSECURE_NO_TOKEN" in last
    assert "cannot reach NATS" not in err.decode()  # refused before connecting
