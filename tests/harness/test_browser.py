"""The agent page in headless Chromium, served by the dashboard behind the
operator login: prompt → streamed reply, badge thinking → idle, chips, cancel
button, sticky scroll with the "↓ N new" pill."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from playwright.async_api import Page as BrowserPage

from hyperhive.common.paths import AgentPaths
from tests import rig
from tests.browser import needs_chromium, open_page
from tests.harness.conftest import (
    UI_TIMEOUT_MS,
    Running,
    Stack,
    agent_name,
    open_agent_page,
    running_harness,
)
from tests.scripted_anthropic import (
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_use,
)

pytestmark = [pytest.mark.browser, pytest.mark.claude, needs_chromium]


async def test_prompt_streams_reply_and_badge_goes_thinking_then_idle(
    dash_stack: Stack, api: ScriptedAnthropic, browser: Browser, tmp_path: Path
) -> None:
    stack = dash_stack
    name = agent_name("br")
    await stack.spawn(name)
    held = api.reply("Hello from the scripted model!", hold=True, when=last_user_mentions("hi"))
    long_text = "\n".join(f"line {i} of a long answer" for i in range(80))
    api.reply(long_text, when=last_user_mentions("write a lot"))
    api.reply("the newest line", when=last_user_mentions("one more"))
    async with running_harness(stack.harness_settings(name)) as h:
        async with open_page(browser, width=1100, height=600, timeout_ms=UI_TIMEOUT_MS) as page:
            # without the operator login: the dashboard's login form, nothing of the agent
            response = await page.goto(f"{stack.dashboard}/agents/{name}/")
            assert response is not None and response.status == 401
            await expect(page.locator("#token")).to_be_visible()
            assert await page.locator("#badge").count() == 0

            await open_agent_page(page, stack, name)
            badge = page.locator("#badge")
            await expect(badge).to_have_attribute("data-state", "idle")
            await expect(page.locator("#chip-model")).to_have_text("model default")

            # /model is a command: the chip follows, no turn
            await page.fill("#prompt", "/model browser-model-1")
            await page.keyboard.press("Enter")
            await expect(page.locator("#chip-model")).to_have_text("model browser-model-1")
            await expect(page.locator("#log .local").last).to_contain_text("browser-model-1")
            assert h.harness.store.model == "browser-model-1"  # through the proxy

            # a prompt becomes a turn: thinking (with a cancel button) while claude streams
            await page.fill("#prompt", "hi")
            await page.keyboard.press("Enter")
            await expect(badge).to_have_attribute("data-state", "thinking")
            await expect(page.locator("#cancel")).to_be_visible()
            await expect(page.locator("#log .operator").last).to_contain_text("› hi")
            await expect(page.locator("#log .sys").last).to_contain_text("hyperhive:connected")
            await page.screenshot(path=str(tmp_path / "thinking.png"))
            held.release()
            await expect(page.locator("#log .text").last).to_contain_text(
                "Hello from the scripted model!"
            )
            await expect(badge).to_have_attribute("data-state", "idle")
            await expect(page.locator("#cancel")).to_be_hidden()
            await expect(page.locator("#log .turn-end").last).to_contain_text("ok")
            await expect(page.locator("#chip-last")).not_to_have_text("last turn –")
            assert api.requests[-1].model == "browser-model-1"

            # sticky bottom: a long answer keeps the view at the end
            await page.fill("#prompt", "write a lot")
            await page.keyboard.press("Enter")
            await expect(page.locator("#log .text").last).to_contain_text("line 79")
            await expect(badge).to_have_attribute("data-state", "idle")
            assert await page.evaluate(
                "(() => { const l = document.getElementById('log');"
                " return l.scrollHeight - l.scrollTop - l.clientHeight < 40; })()"
            )
            # scrolled up, new lines do not move the view: the pill counts them
            await page.evaluate("document.getElementById('log').scrollTop = 0")
            await page.fill("#prompt", "one more")
            await page.keyboard.press("Enter")
            pill = page.locator("#pill")
            await expect(pill).to_be_visible()
            await expect(page.locator("#log .text").last).to_contain_text("the newest line")
            assert int(await page.locator("#pill-n").inner_text()) > 0
            assert await page.evaluate("document.getElementById('log').scrollTop") == 0
            await pill.click()
            await expect(pill).to_be_hidden()
            await page.screenshot(path=str(tmp_path / "agent-page.png"), full_page=True)
            assert (tmp_path / "agent-page.png").stat().st_size > 0


# the badge's age in seconds ("12s", "3m", "1h"), -1 when it shows none
AGE_S = """() => {
  const t = document.getElementById("badge-age").textContent.trim();
  const n = parseInt(t, 10);
  if (Number.isNaN(n)) return -1;
  return t.endsWith("h") ? n * 3600 : t.endsWith("m") ? n * 60 : n;
}"""
AGE_AT_LEAST = f"(min) => ({AGE_S})() >= min"


LINES = "() => Array.from(document.querySelectorAll('#log .line'), (d) => d.textContent)"


def _cancel_then_end(lines: list[str]) -> bool:
    """The log has one "cancelling the running turn" line, before turn 1's "cancelled" end."""
    asks = [i for i, t in enumerate(lines) if t == "cancelling the running turn"]
    ends = [i for i, t in enumerate(lines) if t.startswith("── turn 1 cancelled")]
    assert len(asks) == 1 and len(ends) == 1, lines
    return asks[0] < ends[0]


async def test_cancel_button_age_timer_and_offline_badge(
    dash_stack: Stack, api: ScriptedAnthropic, browser: Browser, tmp_path: Path
) -> None:
    stack = dash_stack
    name = agent_name("bc")
    await stack.spawn(name)
    held = api.reply("pondering at length", hold=True, when=last_user_mentions("ponder"))
    async with running_harness(stack.harness_settings(name)) as h:
        async with open_page(browser, width=1100, height=600, timeout_ms=UI_TIMEOUT_MS) as page:
            await open_agent_page(page, stack, name)
            badge = page.locator("#badge")
            await expect(badge).to_have_attribute("data-state", "idle")

            # the badge's age timer counts up by itself
            start = await page.evaluate(AGE_S)
            assert start >= 0
            await page.wait_for_function(AGE_AT_LEAST, arg=start + 2)

            # a held turn: the cancel button ends it
            await page.fill("#prompt", "ponder the universe")
            await page.keyboard.press("Enter")
            await api.wait_for_request(lambda r: r.reply is held, timeout=60)
            await expect(badge).to_have_attribute("data-state", "thinking")
            cancel = page.locator("#cancel")
            await expect(cancel).to_be_visible()
            await cancel.click()
            await expect(page.locator("#log .local").last).to_contain_text("cancelling")
            await expect(page.locator("#log .turn-end").last).to_contain_text("cancelled")
            await expect(badge).to_have_attribute("data-state", "idle")
            await expect(cancel).to_be_hidden()
            end = await h.turn_end(1, timeout=10)
            assert end["outcome"] == "cancelled"
            assert end["error"] == "cancelled by the operator"
            assert not held.released.is_set()  # ended by the cancel, not by the script
            # the cancel's line comes before the turn's "cancelled" end, also after a reload
            assert _cancel_then_end(await page.evaluate(LINES))
            await page.reload()
            await expect(page.locator("#log .turn-end").last).to_contain_text("cancelled")
            assert _cancel_then_end(await page.evaluate(LINES))

            # the harness stops: the page says offline
            h.stop.set()
            await asyncio.wait_for(h.task, timeout=30)
            await expect(badge).to_have_attribute("data-state", "offline")
            await expect(page.locator("#badge-state")).to_have_text("offline")
            await expect(cancel).to_be_hidden()
            await page.screenshot(path=str(tmp_path / "offline.png"))


async def test_tail_says_a_compaction_was_refused_and_what_a_turn_cost(
    dash_stack: Stack, api: ScriptedAnthropic, browser: Browser
) -> None:
    stack = dash_stack
    name = agent_name("bn")
    await stack.spawn(name)
    api.reply(
        "done",
        when=last_user_mentions("costly"),
        usage={"input_tokens": 400, "output_tokens": 20, "cache_read_input_tokens": 580},
    )
    api.reply("ok", when=mentions("--- notes.md ---"))
    settings = stack.harness_settings(name, HIVE_HARNESS_NOTES_COMPACT_BYTES="2000")
    async with running_harness(settings) as h:
        async with open_page(browser, width=1100, height=600, timeout_ms=UI_TIMEOUT_MS) as page:
            await open_agent_page(page, stack, name)
            await page.fill("#prompt", "costly")
            await page.keyboard.press("Enter")
            end = page.locator("#log .turn-end").last
            await expect(end).to_contain_text("ok")
            await expect(end).to_contain_text("1000 tokens")
            await expect(end).to_contain_text("$")

            notes = "".join(f"- fact {i}: the build server is ci{i}.example\n" for i in range(80))
            h.harness.cfg.notes_path.write_text(notes)
            refused = page.locator("#log .err").last
            await expect(refused).to_contain_text("notes not compacted (refused, too_small)")
            await expect(refused).to_contain_text("'ok'")
            await expect(refused).to_contain_text("the notes are unchanged")
            await expect(refused).to_contain_text(f"hive notes {name} --history")
            assert h.harness.cfg.notes_path.read_text() == notes


async def test_badge_names_the_tool_claude_runs(
    dash_stack: Stack, api: ScriptedAnthropic, browser: Browser, tmp_path: Path
) -> None:
    """From a tool_use until its tool_result the badge says "running <tool>" (and
    the status JSON lists it); back to "thinking" once the result is in."""
    stack = dash_stack
    name = agent_name("bt")
    await stack.spawn(name)
    (AgentPaths.of(stack.settings, name).applied / "agent.toml").write_text(
        'allowed_tools = ["Bash"]\n'
    )
    go = tmp_path / "go"
    wait = f"while [ ! -e {go} ]; do sleep 0.1; done; echo went"
    api.reply(
        tool_use("Bash", {"command": wait, "description": "wait for go"}),
        when=last_user_mentions("run the tool"),
    )
    after = api.reply("the tool ran", hold=True, when=after_tool_results(1))
    async with running_harness(stack.harness_settings(name)) as h:
        async with open_page(browser, width=1100, height=600, timeout_ms=UI_TIMEOUT_MS) as page:
            await open_agent_page(page, stack, name)
            badge, label = page.locator("#badge"), page.locator("#badge-state")
            await expect(badge).to_have_attribute("data-state", "idle")
            await page.fill("#prompt", "run the tool")
            await page.keyboard.press("Enter")
            await expect(label).to_have_text("running Bash")
            await expect(badge).to_have_attribute("data-tool", "Bash")
            status = h.harness.status()
            assert status["state"] == "thinking" and status["tools"] == ["Bash"]
            await page.screenshot(path=str(tmp_path / "running-tool.png"))

            go.touch()
            await api.wait_for_request(lambda r: r.reply is after, timeout=60)
            await expect(label).to_have_text("thinking")
            await expect(badge).to_have_attribute("data-tool", "")
            assert h.harness.status()["tools"] == []
            after.release()
            await expect(badge).to_have_attribute("data-state", "idle")
            assert (await h.turn_end(1))["outcome"] == "ok"


async def test_slash_command_replies_survive_a_reload_and_a_restart(
    dash_stack: Stack, browser: Browser
) -> None:
    """A command's reply is a record (the harness's, in HIVE_TURNS): a reload
    backfills it from the ring, a new harness run from the broker."""
    stack = dash_stack
    name = agent_name("bs")
    await stack.spawn(name)
    settings = stack.harness_settings(name)
    replies = [
        "model: reload-model-1 from the next turn on",
        "unknown command '/nonsense'; /help lists them",
    ]

    async def shown(page: BrowserPage) -> list[str]:
        await expect(page.locator("#log .err")).to_have_count(1)
        lines = await page.evaluate(LINES)
        assert lines.count("› /model reload-model-1") == 1, lines
        assert [t for t in lines if t in replies] == replies, lines
        return lines

    async with open_page(browser, width=1100, height=600, timeout_ms=UI_TIMEOUT_MS) as page:
        async with running_harness(settings):
            await open_agent_page(page, stack, name)
            await expect(page.locator("#badge")).to_have_attribute("data-state", "idle")
            for line in ("/model reload-model-1", "/nonsense"):
                await page.fill("#prompt", line)
                await page.keyboard.press("Enter")
            await expect(page.locator("#log .local")).to_have_text(replies[0])
            await expect(page.locator("#log .err")).to_have_text(replies[1])
            await shown(page)
            await page.reload()
            await expect(page.locator("#log .local")).to_have_text(replies[0])
            await shown(page)
        async with running_harness(settings):
            await page.reload()
            await expect(page.locator("#badge")).to_have_attribute("data-state", "idle")
            await expect(page.locator("#log .local")).to_have_text(replies[0])
            await shown(page)


async def test_last_turn_chip_survives_a_restart(
    dash_stack: Stack, api: ScriptedAnthropic, browser: Browser
) -> None:
    """The status knows the last turn's duration and model after a restart: from
    the state dir, or (a new state dir) from the turn records in HIVE_TURNS."""
    stack = dash_stack
    name = agent_name("bl")
    await stack.spawn(name)
    api.reply("measured", when=last_user_mentions("time me"))
    settings = stack.harness_settings(name)
    async with running_harness(settings) as h:
        await h.harness.operator_prompt("time me")
        stats = (await h.turn_end(1))["stats"]
        kept = h.harness.cfg.harness_dir / "last_turn.json"
    assert stats["duration_ms"] > 0 and stats["model"]

    async def chip_says_it(h: Running) -> None:
        status = h.harness.status()
        assert status["last_turn_ms"] == stats["duration_ms"], status
        assert status["last_turn_model"] == stats["model"] and status["last_outcome"] == "ok"
        async with open_page(browser, width=1100, height=600, timeout_ms=UI_TIMEOUT_MS) as page:
            await open_agent_page(page, stack, name)
            chip = page.locator("#chip-last")
            await expect(chip).to_have_text(re.compile(r"last turn \d"))
            await expect(chip).to_have_attribute("title", re.compile(re.escape(stats["model"])))

    async with running_harness(settings) as h:  # a restart
        await chip_says_it(h)
    kept.unlink()  # a new state dir: the broker's turn records tell it
    async with running_harness(settings) as h:
        await rig.eventually(
            lambda: h.harness.last_turn_ms is not None, timeout=30, what="last turn recalled"
        )
        await chip_says_it(h)
