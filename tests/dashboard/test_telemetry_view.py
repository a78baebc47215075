"""Telemetry an operator reads: one compact row per agent, charts behind a
click, no chart without data, a time axis that spans the window (one point
must not stretch it over years), and the hive's cost per day."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from hyperhive.common import rpc, subjects
from hyperhive.common.wire.broker import StatPoint, TurnStats
from hyperhive.dashboard import stats
from tests import rig
from tests.browser import chromium, log_in, needs_chromium, open_page
from tests.dashboard.conftest import Stack, logged_in


def test_summary_counts_today_only() -> None:
    now = time.time()
    midnight = stats.day_start(now)
    points = []
    for ts, cost, tokens in (
        (midnight - 60, 5.0, 1000),
        (midnight + 1, 0.25, 300),
        (now, 0.5, 200),
    ):
        points += [
            StatPoint(agent="a", ts=ts, key="duration_ms", value=2500.0),
            StatPoint(agent="a", ts=ts, key="cost_usd", value=cost),
            StatPoint(agent="a", ts=ts, key="input_tokens", value=tokens),
            StatPoint(agent="a", ts=ts, key="output_tokens", value=10.0),
            StatPoint(agent="a", ts=ts, key="inbox_depth", value=3.0),
            StatPoint(agent="a", ts=ts, key="exit_code", value=0.0),
        ]
    s = stats.summary(points, now=now)
    assert (s["turns_today"], s["cost_today_usd"], s["tokens_today"]) == (2, 0.75, 520)
    assert (s["last_turn_s"], s["inbox_depth"], s["failed_today"]) == (2.5, 3.0, 0)
    empty = stats.summary([], now=now)
    assert empty["turns_today"] == 0 and empty["last_turn_s"] is None


def test_cost_per_day_buckets_by_local_day() -> None:
    now = time.time()
    today = stats.day_start(now)
    yesterday = stats.day_start(today - 3600)
    points = [
        StatPoint(agent="a", ts=today + 5, key="cost_usd", value=1.5),
        StatPoint(agent="b", ts=now, key="cost_usd", value=0.5),
        StatPoint(agent="a", ts=yesterday + 10, key="cost_usd", value=0.25),
        StatPoint(agent="a", ts=now, key="duration_ms", value=99.0),
    ]
    chart = stats.cost_per_day(points, days=3, now=now)
    assert chart["x"][-2:] == [yesterday, today] and len(chart["x"]) == 3
    assert chart["series"]["cost USD"] == [0.0, 0.25, 2.0]


def test_has_data() -> None:
    assert not stats.has_data({"x": [1, 2], "series": {"a": [None, 0.0]}})
    assert stats.has_data({"x": [1], "series": {"a": [0.0], "b": [2.0]}})


@pytest.fixture(scope="module")
async def one_turn(stack: Stack) -> float:
    """hm1nd's one and only turn, a minute ago."""
    assert stack.manager is not None
    ts = time.time() - 60
    turn = TurnStats(
        ts=ts,
        duration_ms=4200.0,
        exit_code=0,
        tool_calls={"Read": 2},
        input_tokens=1500,
        output_tokens=500,
        cost_usd=0.42,
        inbox_depth=2,
    )
    await rpc.publish(stack.manager, subjects.agent(subjects.MANAGER, "stats"), turn)
    async with logged_in(stack) as client:

        async def charted() -> bool:
            r = await client.get("/api/stats", params={"agent": "hm1nd", "window": 3600})
            return r.json().get("turns") == 1

        await rig.eventually(charted, timeout=20, what="the turn charted")
    return ts


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with logged_in(stack) as c:
        yield c


async def test_summary_and_no_empty_charts(
    stack: Stack, one_turn: float, client: httpx.AsyncClient
) -> None:
    data = (await client.get("/api/stats", params={"agent": "hm1nd", "window": 3600})).json()
    s = data["summary"]
    assert (s["turns_today"], s["cost_today_usd"], s["tokens_today"]) == (1, 0.42, 2000)
    assert (s["last_turn_s"], s["inbox_depth"]) == (4.2, 2)
    # one turn: nothing to say about the time between turns, no notes size
    assert "since_last_turn" not in data["charts"] and "notes" not in data["charts"]
    assert {"turns_per_min", "duration", "tool_calls", "inbox_depth"} <= set(data["charts"])
    assert data["start"] <= one_turn <= data["end"]
    assert data["end"] - data["start"] == 3600
    hive = (await client.get("/api/stats/hive", params={"window": 3600})).json()
    costs = hive["charts"]["cost_per_day"]
    assert costs["series"]["cost USD"][-1] == 0.42 and len(costs["x"]) == 14


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
async def test_one_point_keeps_the_window_axis(
    stack: Stack, one_turn: float, width: int, height: int, tmp_path: Path
) -> None:
    async with (
        chromium() as browser,
        open_page(
            browser, width=width, height=height, timeout_ms=30_000, console_errors=True
        ) as page,
    ):
        await log_in(page, stack.login_url)
        row = page.locator('tr.tele[data-agent="hm1nd"]')
        await expect(row.locator('[data-role="turns"]')).to_have_text("1")
        await expect(row.locator('[data-role="cost"]')).to_have_text("$0.42")
        await expect(row.locator('[data-role="tokens"]')).to_have_text("2.0k")
        await expect(row.locator('[data-role="inbox"]')).to_have_text("2")
        await expect(row.locator('[data-role="last"]')).to_contain_text("4.2 s")
        await expect(row.locator('svg[data-spark="turns_per_min"] path')).to_have_count(1)
        panel = page.locator("#tele-charts-hm1nd")
        await expect(panel).to_be_hidden()
        await row.get_by_role("button", name="Charts of hm1nd").click()
        await expect(panel.locator("figure[data-chart] canvas").first).to_be_visible()
        await expect(panel.locator('figure[data-chart="notes"]')).to_have_count(0)
        await expect(panel.locator('figure[data-chart="since_last_turn"]')).to_have_count(0)
        # the x axis of a one-point chart spans the hour, not years
        fig = panel.locator('figure[data-chart="tool_calls"]')
        x_min, x_max = await fig.evaluate("(f) => [f.uplot.scales.x.min, f.uplot.scales.x.max]")
        assert x_max - x_min == pytest.approx(3600, abs=5)
        assert x_min <= one_turn <= x_max
        hive = page.locator(".tele[data-hive]")
        await expect(hive.locator('figure[data-chart="cost_per_day"] canvas')).to_be_visible()
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        await page.screenshot(path=str(tmp_path / f"telemetry-{width}.png"))
