"""The dashboard in headless Chromium against the running stack.

Each test drives the page the way the operator does (type, click, read) and
saves a screenshot in its tmp dir. A marker set on ``window`` before acting
proves that nothing reloaded the page.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from hyperhive.common import rpc, subjects
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import (
    AckRequest,
    RecvReply,
    RecvRequest,
    SendReply,
    SendRequest,
    TurnStats,
)
from hyperhive.common.wire.events import OperatorAnswered
from tests.browser import chromium, log_in, needs_chromium, open_page
from tests.dashboard.conftest import (
    Stack,
    agents,
    ask_operator,
    commit_config,
    request_apply_commit,
    set_prompt,
    spawn_agent,
    unique_name,
)

pytestmark = [pytest.mark.browser, needs_chromium]
UI_TIMEOUT_MS = 30_000
TIMEOUT = 30.0


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def page(browser: Browser, stack: Stack, tmp_path: Path) -> AsyncIterator[Page]:
    async with open_page(browser, width=1280, height=900, timeout_ms=UI_TIMEOUT_MS) as pg:
        await log_in(pg, stack.login_url)
        await pg.evaluate("window.__noReload = 'still here'")
        yield pg
        await pg.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__noReload") == "still here"


async def test_spawn_from_the_form_shows_the_agent_running(page: Page, stack: Stack) -> None:
    name = unique_name("sp")
    await page.get_by_label("Spawn an agent named").fill(name)
    await page.get_by_role("button", name="Spawn", exact=True).click()
    card = page.locator(f"#agent-{name}")
    await expect(card.locator('[data-role="state"]')).to_have_text("running")
    # its page is the dashboard's own (no port of the agent's)
    await expect(card.get_by_role("link")).to_have_attribute("href", f"/agents/{name}/")
    await expect(page.locator("#toasts")).to_contain_text(f"Spawned {name}")
    await assert_not_reloaded(page)

    # its log follows in a collapsible panel
    await card.locator("summary", has_text="Logs").click()
    await expect(card.locator("pre.log")).to_contain_text("harness start")

    # the same card's actions work in place: stop it
    await card.get_by_role("button", name=f"Stop {name}", exact=True).click()
    await expect(card.locator('[data-role="state"]')).to_have_text("stopped")
    await assert_not_reloaded(page)


async def test_approve_an_apply_commit_and_see_it_deployed(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    name = await spawn_agent(stack, "ap")
    sha = await commit_config(stack.settings, name, set_prompt("be terse"), "be terse")
    approval_id = await request_apply_commit(stack, name, sha)

    card = page.locator(f"#approval-{approval_id}")
    await expect(card).to_be_visible()  # arrived live (approval.queued), no reload
    await expect(card).to_contain_text(sha[:12])
    await expect(card.locator(".dl.add")).to_contain_text('+prompt = "be terse"')
    await expect(card.locator(".dl.del")).to_contain_text('-prompt = ""')
    await card.screenshot(path=str(tmp_path / "pending.png"))
    await card.get_by_role("button", name="Approve").click()

    resolved = page.locator(f"#resolved-{approval_id}")
    await expect(resolved).to_contain_text("deployed")
    await expect(resolved).to_contain_text(f"deployed/{approval_id}")
    # who decided, and when (the clock time, not only "ago")
    by = 'approved by operator via dashboard (token "operator") at'
    await expect(resolved.locator(".decided")).to_contain_text(by)
    await expect(resolved.locator(".decided time")).to_have_text(re.compile(r"\d\d:\d\d:\d\d$"))
    await expect(card).to_have_count(0)
    await assert_not_reloaded(page)


async def test_deny_with_a_note(page: Page, stack: Stack) -> None:
    name = await spawn_agent(stack, "dn")
    sha = await commit_config(stack.settings, name, set_prompt("shout"), "shout")
    approval_id = await request_apply_commit(stack, name, sha)

    card = page.locator(f"#approval-{approval_id}")
    await expect(card).to_be_visible()
    await card.get_by_label("Note").fill("no shouting in the hive")
    await card.get_by_role("button", name="Deny").click()

    resolved = page.locator(f"#resolved-{approval_id}")
    await expect(resolved).to_contain_text("denied")
    await expect(resolved).to_contain_text(f"denied/{approval_id}")
    await expect(resolved).to_contain_text("no shouting in the hive")
    await expect(resolved.locator(".decided")).to_contain_text("denied by operator via dashboard")
    await assert_not_reloaded(page)


async def test_the_printed_login_url_logs_in_and_leaves_the_address_bar(
    browser: Browser, stack: Stack
) -> None:
    async with open_page(browser, width=1280, height=900, timeout_ms=UI_TIMEOUT_MS) as pg:
        # no token: the login form, on every page
        await pg.goto(stack.url + "/")
        await expect(pg.locator("form[action='/login']")).to_be_visible()
        await expect(pg.locator("#agent-hm1nd")).to_have_count(0)
        # a wrong token in the URL: refused
        await pg.goto(f"{stack.url}/login?token=wrong")
        await expect(pg.get_by_role("alert")).to_contain_text("wrong token")
        # the URL `hive up` prints: logged in, redirected, the token gone from the address
        response = await pg.goto(stack.login_url)
        assert response is not None and response.ok
        assert pg.url == stack.url + "/"
        await expect(pg.locator("#agent-hm1nd")).to_be_visible()
        assert stack.token not in await pg.content()
        cookies = {c["name"]: c for c in await pg.context.cookies()}
        session = cookies["hive_session"]
        assert session["httpOnly"] and stack.token not in session["value"]
        # a reload keeps the session; the login form works by typing the token too
        await pg.reload()
        await expect(pg.locator("#agent-hm1nd")).to_be_visible()
        await pg.context.clear_cookies()
        await pg.goto(stack.url + "/login")
        await pg.get_by_label("Operator token").fill(stack.token)
        await pg.get_by_role("button", name="Log in").click()
        await expect(pg.locator("#agent-hm1nd")).to_be_visible()
        assert pg.url == stack.url + "/"


async def test_answer_a_radio_question_reaches_the_manager(page: Page, stack: Stack) -> None:
    assert stack.manager is not None
    question = f"which colour for the hive? ({time.time():.0f})"
    question_id = await ask_operator(stack, question, ["amber", "teal", "violet"])
    form = page.locator(f"#question-{question_id}")
    await expect(form).to_contain_text(question)
    await form.get_by_label("teal").check()
    await form.get_by_role("button", name="Answer").click()
    await expect(page.locator(f"#answered-{question_id}")).to_contain_text("teal")
    await assert_not_reloaded(page)

    # hm1nd's inbox receives the answer as a system event
    answered = await manager_receives_answer(stack, question_id)
    assert answered.answer == ["teal"]
    assert answered.question == question


async def manager_receives_answer(stack: Stack, question_id: int) -> OperatorAnswered:
    """Pops hm1nd's inbox (acking what it reads) until the answer shows up."""
    assert stack.manager is not None
    recv = subjects.agent(subjects.MANAGER, "recv")
    ack = subjects.agent(subjects.MANAGER, "ack")
    async with asyncio.timeout(TIMEOUT):
        while True:
            reply = await rpc.request(
                stack.manager, recv, RecvRequest(wait_ms=5000), RecvReply, timeout=TIMEOUT
            )
            if reply.message is None:
                continue
            await rpc.request(stack.manager, ack, AckRequest(id=reply.message.id), Ok)
            event = reply.message.event
            if isinstance(event, OperatorAnswered) and event.question_id == question_id:
                return event


async def test_a_sent_message_appears_live_in_the_flow(page: Page, stack: Stack) -> None:
    assert stack.manager is not None
    body = f"hello operator, the time is {time.time()}"
    flow = page.locator("#flow-list")
    await expect(flow).to_be_attached()
    sent = await rpc.request(
        stack.manager,
        subjects.agent(subjects.MANAGER, "send"),
        SendRequest(to=subjects.OPERATOR, body=body),
        SendReply,
    )
    row = flow.locator(f'li[data-id="{sent.id}"]')
    await expect(row).to_contain_text(body)
    await expect(row.locator(".from")).to_have_text("hm1nd")
    await expect(row.locator(".to")).to_have_text("operator")
    await assert_not_reloaded(page)

    # filtering on another agent hides it; clearing the filter brings it back
    await page.get_by_label("Filter by agent").fill("nobody")
    await page.get_by_label("Filter by agent").press("Enter")
    await expect(row).to_have_count(0)
    await page.get_by_role("button", name="All agents", exact=True).click()
    await expect(flow.locator(f'li[data-id="{sent.id}"]')).to_contain_text(body)


async def test_page_works_at_phone_width(browser: Browser, stack: Stack, tmp_path: Path) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = await context.new_page()
    try:
        await log_in(pg, stack.login_url)
        await expect(pg.locator("#agent-hm1nd")).to_be_visible()
        # nothing wider than the screen: no sideways scrolling of the page
        overflow = await pg.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        # keyboard focus is visible: Tab reaches a control that draws an outline
        await pg.keyboard.press("Tab")
        await pg.keyboard.press("Tab")
        outline = await pg.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        await pg.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        await context.close()


async def test_telemetry_charts_render_with_uplot(page: Page, stack: Stack) -> None:
    assert stack.manager is not None
    now = time.time()
    for i in range(4):
        stats = TurnStats(
            ts=now - 40 + 10 * i,
            duration_ms=1000.0 * (i + 1),
            exit_code=0,
            tool_calls={"Read": i, "mcp__hyperhive__send": 1},
            messages_sent=1,
            messages_sent_to={"peer": 1},
            inbox_depth=i,
            notes_bytes=1024 * (i + 1),
            input_tokens=500,
            cache_read_tokens=1500,
            model_calls=1,
            cost_usd=0.125,
        )
        await rpc.publish(stack.manager, subjects.agent(subjects.MANAGER, "stats"), stats)
    row = page.locator('tr.tele[data-agent="hm1nd"]')
    # the row redraws live on the broker's stats.turn events
    await expect(row.locator('[data-role="last"]')).to_contain_text("4 turns in window")
    await expect(row.locator('[data-role="turns"]')).to_have_text(re.compile(r"^\d+"))
    # the full charts are behind a click
    card = page.locator("#tele-charts-hm1nd")
    await expect(card).to_be_hidden()
    await row.get_by_role("button", name="Charts of hm1nd").click()
    await expect(card).to_be_visible()
    # every chart the API serves is drawn, each one with data
    api = await page.evaluate("fetch('/api/stats?agent=hm1nd&window=3600').then((r) => r.json())")
    served = set(api["charts"])
    assert {"turns_per_min", "duration", "tool_calls", "exit_codes", "inbox_depth"} <= served
    assert {"messages", "tools", "since_last_turn", "notes"} <= served
    figures = card.locator("figure[data-chart]")
    await expect(figures).to_have_count(len(served))
    drawn = set(await figures.evaluate_all("(fs) => fs.map((f) => f.dataset.chart)"))
    assert drawn == served
    for chart in sorted(served):
        fig = card.locator(f'figure[data-chart="{chart}"]')
        await expect(fig.locator("canvas").first).to_be_visible()
        await expect(fig.locator(".nodata")).to_have_count(0)
    hive = page.locator(".tele[data-hive]")
    # the approval queue is drawn only if something waited (no chart without data)
    served_hive = await page.evaluate("fetch('/api/stats/hive?window=3600').then((r) => r.json())")
    series = served_hive["charts"]["approval_queue"]["series"].values()
    has_queue = any(v for values in series for v in values)
    queue = hive.locator('figure[data-chart="approval_queue"] canvas')
    await expect(queue).to_have_count(1 if has_queue else 0)
    await expect(card.locator('figure[data-chart="duration"]')).to_contain_text("p95 s")
    await expect(card.locator('figure[data-chart="messages"]')).to_contain_text("sent → peer")
    await expect(card.locator('figure[data-chart="tools"]')).to_contain_text("Read")
    # cost and tokens: today's on the row, the hive's cost per day, a row per agent and day
    await expect(row.locator('[data-role="cost"]')).to_contain_text("$")
    await expect(card.locator('figure[data-chart="cost"]')).to_contain_text("USD")
    await expect(hive.locator('figure[data-chart="cost_per_day"]')).to_have_count(1)
    total = hive.locator('table.usage tr[data-agent="hm1nd"][data-day="total"]')
    await expect(total).to_be_visible()
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    await expect(
        hive.locator(f'table.usage tr[data-agent="hm1nd"][data-day="{today}"]')
    ).to_have_count(1)
    await card.scroll_into_view_if_needed()
    await assert_not_reloaded(page)


async def test_card_actions_with_their_confirm_dialogs(page: Page, stack: Stack) -> None:
    """kill, destroy and purge ask first (Playwright dismisses a dialog unless told)."""
    name = await spawn_agent(stack, "ka")
    (AgentPaths.of(stack.settings, name).state / "notes.md").write_text("keep me\n")
    card = page.locator(f"#agent-{name}")
    state = card.locator('[data-role="state"]')
    await expect(state).to_have_text("running")  # arrived live (agent events)
    toasts = page.locator("#toasts")
    asked: list[str] = []

    async def dismiss(dialog) -> None:  # type: ignore[no-untyped-def]
        asked.append(dialog.message)
        await dialog.dismiss()

    async def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        asked.append(dialog.message)
        await dialog.accept()

    # a dismissed confirm sends nothing
    KILL = f"Kill {name} now, without waiting for its turn to end?"
    kill = card.get_by_role("button", name=f"Kill {name}", exact=True)
    page.once("dialog", dismiss)
    await kill.click()
    assert asked == [KILL]
    assert await kill.is_enabled()  # the form never went busy: no request
    assert (await agents(stack))[name].state == "running"

    page.once("dialog", accept)
    await kill.click()
    await expect(state).to_have_text("stopped")
    await expect(toasts).to_contain_text(f"kill: {name} is stopped")
    for verb, shown in (("start", "running"), ("restart", "running"), ("update", "running")):
        await card.get_by_role("button", name=f"{verb.capitalize()} {name}", exact=True).click()
        await expect(toasts).to_contain_text(f"{verb}: {name} is {shown}")
        await expect(state).to_have_text(shown)
    assert asked == [KILL, KILL]  # only kill asked

    # destroy (state kept) asks, then the agent moves to K3PT ST4T3
    page.once("dialog", accept)
    await card.get_by_role("button", name=f"Destroy {name}", exact=True).click()
    await expect(card).to_have_count(0)
    kept = page.locator(f'#body-kept li[data-agent="{name}"]')
    await expect(kept).to_be_visible()
    assert asked[-1] == f"Destroy {name}?"

    # purge asks too; dismissed it keeps the state, accepted it is gone
    page.once("dialog", dismiss)
    await kept.get_by_role("button", name="Purge").click()
    assert asked[-1].startswith(f"purge the kept state of {name}?")
    assert await kept.get_by_role("button", name="Purge").is_enabled()
    page.once("dialog", accept)
    await kept.get_by_role("button", name="Purge").click()
    await expect(kept).to_have_count(0)
    await expect(toasts).to_contain_text(f"purged kept state of {name}")
    assert not AgentPaths.of(stack.settings, name).state.exists()
    await assert_not_reloaded(page)


async def test_the_logs_panel_follows_new_lines(page: Page, stack: Stack) -> None:
    name = await spawn_agent(stack, "lg")
    card = page.locator(f"#agent-{name}")
    await card.locator("summary", has_text="Logs").click()
    log = card.locator("pre.log")
    await expect(log).to_contain_text("harness start")
    # the harness writes to its log (its stdout) while the panel is open
    line = f"harness says hello at {time.time()}"
    with AgentPaths.of(stack.settings, name).log_file.open("a") as f:
        f.write(line + "\n")
    await expect(log).to_contain_text(line)
    text = await log.inner_text()
    assert text.count("harness start") == 1  # appended, not reloaded
    await assert_not_reloaded(page)


async def test_layout_fits_1280_px(page: Page, stack: Stack, tmp_path: Path) -> None:
    """Long content (a wide diff, a long message, many agents) scrolls inside its
    own box; the page itself never scrolls sideways at 1280 px."""
    assert stack.manager is not None
    name = await spawn_agent(stack, "wd")
    long = "w" * 600
    sha = await commit_config(stack.settings, name, set_prompt(long), "a very long prompt")
    approval_id = await request_apply_commit(stack, name, sha)
    await rpc.request(
        stack.manager,
        subjects.agent(subjects.MANAGER, "send"),
        SendRequest(to=subjects.OPERATOR, body="x" * 2000),
        SendReply,
    )
    await expect(page.locator(f"#approval-{approval_id} .dl.add")).to_contain_text("www")
    await expect(page.locator(f"#agent-{name}")).to_be_visible()
    await page.locator(f"#agent-{name} summary", has_text="Logs").click()
    await expect(page.locator(f"#agent-{name} pre.log")).to_contain_text("harness start")
    assert page.viewport_size == {"width": 1280, "height": 900}
    width = await page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 1280, f"the page is {width} px wide at 1280 px"
    await page.screenshot(path=str(tmp_path / "at-1280.png"), full_page=True)
