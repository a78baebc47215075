"""Reaching the operator: browser notifications of waiting decisions, the
installable app (manifest, icons, favicon), and the phone approval flow, in
headless Chromium and over HTTP against the running stack."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from tests.browser import chromium, log_in, needs_chromium, open_page
from tests.dashboard.conftest import (
    Stack,
    approval,
    ask_operator,
    commit_config,
    request_apply_commit,
    set_prompt,
    spawn_agent,
)

UI_TIMEOUT_MS = 30_000

# Records every notification the page creates, then lets the real one through
# (the permission is the browser's own: this wrapper only reads it).
RECORD_NOTIFICATIONS = """
(() => {
  const Real = window.Notification;
  if (!Real) return;
  window.__notifications = [];
  class Recorded extends Real {
    constructor(title, options) {
      const o = options || {};
      window.__notifications.push({ title, body: o.body, tag: o.tag });
      super(title, options);
    }
  }
  Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
  Recorded.requestPermission = (...args) => Real.requestPermission(...args);
  window.Notification = Recorded;
})();
"""


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.mark.browser
@needs_chromium
async def test_notification_permission_flow_and_a_new_decision(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    async with open_page(browser, width=1280, height=900, timeout_ms=UI_TIMEOUT_MS) as page:
        await page.context.add_init_script(RECORD_NOTIFICATIONS)
        await log_in(page, stack.login_url)
        assert await page.evaluate("Notification.permission") == "default"
        button = page.get_by_role("button", name="Turn on notifications")
        await expect(button).to_be_visible()

        # the operator clicks once; the browser grants it (as a user's "Allow")
        await page.context.grant_permissions(["notifications"], origin=stack.url)
        await button.click()
        await expect(page.locator("#notify-state")).to_have_text("notifications on")
        await expect(button).to_be_hidden()

        qid = await ask_operator(stack, "Deploy to the staging host tonight?")
        name = await spawn_agent(stack, "nt")
        sha = await commit_config(stack.settings, name, set_prompt("quiet"), "quiet")
        aid = await request_apply_commit(stack, name, sha)
        await page.wait_for_function("window.__notifications.length >= 2")
        seen = await page.evaluate("window.__notifications")
        by_tag = {n["tag"]: n for n in seen}
        assert by_tag[f"question-{qid}"]["title"] == f"Question #{qid} from hm1nd"
        assert by_tag[f"question-{qid}"]["body"] == "Deploy to the staging host tonight?"
        assert by_tag[f"approval-{aid}"]["title"] == f"Approval #{aid} waits"
        assert by_tag[f"approval-{aid}"]["body"] == f"Deploy a change to {name}"
        assert len(seen) == 2  # one each, nothing for the spawn's own events
        # the tab's title counts what waits
        await expect(page).to_have_title(re.compile(r"^\(\d+ waiting\) hyperhive"))
        await page.screenshot(path=str(tmp_path / "notifications.png"))

        # a reload does not ask again: the browser remembers the answer
        await page.reload()
        await expect(page.locator("#notify-state")).to_have_text("notifications on")
        await expect(page.get_by_role("button", name="Turn on notifications")).to_be_hidden()


@pytest.mark.browser
@needs_chromium
async def test_no_notification_without_permission(browser: Browser, stack: Stack) -> None:
    async with open_page(browser, width=1280, height=900, timeout_ms=UI_TIMEOUT_MS) as page:
        await page.context.add_init_script(RECORD_NOTIFICATIONS)
        await log_in(page, stack.login_url)
        qid = await ask_operator(stack, "Nobody will be told about this one?")
        await expect(page.locator(f"#question-{qid}")).to_be_visible()  # arrived live
        assert await page.evaluate("window.__notifications") == []


@pytest.mark.browser
@needs_chromium
async def test_phone_flow_open_log_in_read_the_diff_approve(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    name = await spawn_agent(stack, "ph")
    sha = await commit_config(stack.settings, name, set_prompt("phone"), "phone")
    aid = await request_apply_commit(stack, name, sha)
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        page = await context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        # the link a notification carries, opened on a phone not yet logged in
        await page.goto(f"{stack.url}/#approval-{aid}")
        await expect(page.get_by_label("token")).to_be_visible()
        await page.get_by_label("token").fill(stack.token)
        await page.get_by_label("token").press("Enter")
        card = page.locator(f"#approval-{aid}")
        await expect(card).to_be_visible()
        await card.scroll_into_view_if_needed()
        await expect(card.locator(".dl.add")).to_contain_text('+prompt = "phone"')
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        await page.screenshot(path=str(tmp_path / "phone-pending.png"))
        await card.get_by_role("button", name="Approve").tap()
        await expect(page.locator(f"#resolved-{aid}")).to_contain_text("deployed")
        assert (await approval(stack, aid)).state == "deployed"
        await page.screenshot(path=str(tmp_path / "phone-deployed.png"), full_page=True)
    finally:
        await context.close()


async def test_manifest_icons_and_favicon_are_served_without_login(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        r = await client.get("/manifest.webmanifest")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/manifest+json")
        manifest = r.json()
        assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
        sizes = {i["sizes"] for i in manifest["icons"]}
        assert {"192x192", "512x512"} <= sizes
        for icon in manifest["icons"]:
            img = await client.get(icon["src"])
            assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
            width = int.from_bytes(img.content[16:20], "big")
            assert f"{width}x{width}" == icon["sizes"]
        fav = await client.get("/favicon.ico")
        assert fav.status_code == 200 and fav.headers["content-type"] == "image/x-icon"
        assert fav.content[:4] == b"\x00\x00\x01\x00"
        sw = await client.get("/sw.js")
        assert sw.status_code == 200 and "notificationclick" in sw.text
        # the page itself still needs the token
        assert (await client.get("/", headers={"Accept": "text/html"})).status_code == 401


@pytest.mark.browser
@needs_chromium
async def test_page_links_the_manifest_and_chromium_reads_it(
    browser: Browser, stack: Stack
) -> None:
    async with open_page(
        browser, width=390, height=844, timeout_ms=UI_TIMEOUT_MS, console_errors=True
    ) as page:
        await log_in(page, stack.login_url)
        href = await page.get_attribute('link[rel="manifest"]', "href")
        assert href == "/manifest.webmanifest"
        cdp = await page.context.new_cdp_session(page)
        result = await cdp.send("Page.getAppManifest")
        assert not result.get("errors"), result.get("errors")
        assert '"short_name": "hyperhive"' in result["data"]
