"""The truth at a glance: uptime from the last start, controls that fit the
state, a clear reason when an action is refused, and a health strip with
every part the hive needs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from tests.browser import chromium, log_in, needs_chromium, open_page
from tests.dashboard.conftest import Stack, agents, csrf_session, logged_in, spawn_agent

VERBS = ("start", "stop", "restart", "kill", "update", "destroy")


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with logged_in(stack) as c:
        yield c


def card(section: str, name: str) -> str:
    match = re.search(rf'<article class="card agent" id="agent-{name}".*?</article>', section, re.S)
    assert match, f"no card for {name}"
    return match.group(0)


def controls(card_html: str) -> set[str]:
    return set(re.findall(r'data-verb="([a-z]+)"', card_html))


async def test_controls_and_uptime_follow_the_state(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    name = await spawn_agent(stack, "gl")
    running = card((await client.get("/section/containers")).text, name)
    assert controls(running) == {"stop", "restart", "kill", "update", "destroy"}
    assert "up for" in running and "stopped since" not in running
    since = (await agents(stack))[name].state_since
    assert f'datetime="{int(since)}"' in running  # from the last start, not creation

    headers = {"X-CSRF-Token": await csrf_session(client), "Accept": "application/json"}
    r = await client.post(f"/agents/{name}/stop", headers=headers)
    assert r.status_code == 200, r.text
    stopped = card((await client.get("/section/containers")).text, name)
    assert controls(stopped) == {"start", "update", "destroy"}
    assert "stopped since" in stopped and "up for" not in stopped

    r = await client.post(f"/agents/{name}/start", headers=headers)
    assert r.status_code == 200, r.text
    restarted = card((await client.get("/section/containers")).text, name)
    assert "up for" in restarted
    new_since = (await agents(stack))[name].state_since
    assert new_since > since and f'datetime="{int(new_since)}"' in restarted


async def test_a_refused_action_says_which_and_why(stack: Stack, client: httpx.AsyncClient) -> None:
    headers = {"X-CSRF-Token": await csrf_session(client), "Accept": "application/json"}
    r = await client.post("/agents/ghost/start", headers=headers)
    assert r.status_code == 404
    message = r.json()["message"]
    assert message.startswith("Could not start ghost: ") and "ghost" in message[23:]


async def test_the_health_strip_names_every_part(stack: Stack, client: httpx.AsyncClient) -> None:
    strip = (await client.get("/section/status")).text
    parts = re.findall(r'class="svc (svc-up|svc-down)" data-service="([a-z-]+)"', strip)
    assert [p for _, p in parts] == [
        "nats",
        "postgres",
        "broker",
        "lifecycle",
        "approvals",
        "crash-watch",
        "dashboard",
    ]
    state = {p: s for s, p in parts}
    for part in ("nats", "postgres", "broker", "lifecycle", "approvals", "dashboard"):
        assert state[part] == "svc-up", part
    # this stack runs no crash-watch: down, with the reason
    assert state["crash-watch"] == "svc-down"
    down = re.search(r'data-service="crash-watch">(.*?)</li>', strip, re.S)
    assert down and "svc-err" in down.group(1) and "crash-watch" in down.group(1)
    # ... and the error stays as its last error (shown with its time once it is back)
    again = (await client.get("/section/status")).text
    assert 'data-service="crash-watch"' in again


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
async def test_state_aware_controls_in_the_browser(
    browser: Browser, stack: Stack, width: int, height: int, tmp_path: Path
) -> None:
    name = await spawn_agent(stack, "bw")
    async with open_page(browser, width=width, height=height, timeout_ms=30_000) as page:
        await log_in(page, stack.login_url)
        c = page.locator(f"#agent-{name}")
        start = c.get_by_role("button", name=f"Start {name}", exact=True)
        stop = c.get_by_role("button", name=f"Stop {name}", exact=True)
        await expect(stop).to_be_visible()
        await expect(start).to_have_count(0)
        await expect(c.locator('[data-role="uptime"]')).to_contain_text("up for")
        await stop.click()
        await expect(c.locator('[data-role="state"]')).to_have_text("stopped")
        await expect(start).to_be_visible()
        await expect(stop).to_have_count(0)
        await expect(c.get_by_role("button", name=f"Kill {name}", exact=True)).to_have_count(0)
        await expect(c.locator('[data-role="uptime"]')).to_contain_text("stopped since")
        await page.screenshot(path=str(tmp_path / f"stopped-{width}.png"))
        await start.click()
        await expect(c.locator('[data-role="state"]')).to_have_text("running")
        await expect(stop).to_be_visible()
        strip = page.locator("#body-status")
        for part in ("nats", "postgres", "dashboard"):
            await expect(strip.locator(f'[data-service="{part}"]')).to_contain_text("up")
