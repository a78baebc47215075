"""The optional operator token: every page, action and SSE stream needs it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres
from hyperhive.common import rpc, subjects
from hyperhive.common.wire.broker import HistoryReply, InboxRequest
from tests import rig
from tests.dashboard.conftest import (
    CSRF_META,
    Stack,
    agents,
    approval,
    ask_operator,
    commit_config,
    question,
    request_apply_commit,
    running_stack,
    set_prompt,
    spawn_agent,
    stack_settings,
    unique_name,
)

TOKEN = "s3cr3t-operator-token-for-tests"


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
        nats_server, database_url, home, HIVE_DASHBOARD_TOKEN_FILE=str(token_file)
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
    assert "l0g0ut" in r.text
