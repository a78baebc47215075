"""The activity timeline against a real hive: what the operator (dashboard
and CLI), the manager and the system did, over HTTP (``/api/activity``, the
section, the diff page it links to) and ``hive log`` / ``hive events``."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from playwright.async_api import Browser, expect

from hyperhive.cli.embedded import free_port
from hyperhive.common.activity import Entry, entry, matches, who_kind
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.events import HiveEvent
from tests import rig
from tests.browser import log_in, needs_chromium, open_page
from tests.dashboard.conftest import (
    Stack,
    ask_operator,
    commit_config,
    csrf_session,
    logged_in,
    request_apply_commit,
    set_prompt,
    unique_name,
)

DASHBOARD = 'operator via dashboard (token "operator")'


async def timeline(stack: Stack, **params: str) -> list[dict[str, Any]]:
    async with logged_in(stack) as client:
        r = await client.get("/api/activity", params=params)
        assert r.status_code == 200, r.text[:300]
        return list(r.json()["entries"])


def find(entries: list[dict[str, Any]], **fields: object) -> dict[str, Any]:
    hits = [e for e in entries if all(e.get(k) == v for k, v in fields.items())]
    assert hits, f"no entry with {fields} in {[(e['category'], e['text']) for e in entries]}"
    return hits[-1]


@pytest.fixture(scope="module")
async def story(stack: Stack) -> dict[str, Any]:
    """One afternoon in the hive, done once for this module's tests:
    the operator spawns from the dashboard, the manager asks for a change
    the operator approves with the CLI and one the operator denies on the
    dashboard, a question is answered, the CLI stops the agent, and a
    second agent's process dies by itself."""
    name = unique_name("tl")
    crasher = unique_name("cr")
    async with logged_in(stack) as client:
        token = await csrf_session(client)
        headers = {"X-CSRF-Token": token, "Accept": "application/json"}
        for who in (name, crasher):
            r = await client.post("/agents/spawn", data={"name": who}, headers=headers)
            assert r.status_code == 200, r.text
        sha = await commit_config(stack.settings, name, set_prompt("terse"), "terse")
        deployed = await request_apply_commit(stack, name, sha)
        code, out, err = await rig.hive_cli(stack.settings, "approve", str(deployed))
        assert code == 0, (out, err)
        sha2 = await commit_config(
            stack.settings, name, lambda t: t.replace('"terse"', '"shout"'), "shout"
        )
        denied = await request_apply_commit(stack, name, sha2)
        r = await client.post(
            f"/approvals/{denied}/deny", data={"note": "no shouting"}, headers=headers
        )
        assert r.status_code == 200, r.text
        qid = await ask_operator(stack, "Which model for the new agent?", ["small", "large"])
        r = await client.post(f"/questions/{qid}/answer", data={"answer": "small"}, headers=headers)
        assert r.status_code == 200, r.text
    code, out, err = await rig.hive_cli(stack.settings, "stop", name)
    assert code == 0, (out, err)
    pid_file = AgentPaths.of(stack.settings, crasher).run / "harness.pid"
    os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    async def crashed() -> bool:
        entries = await timeline(stack, agent=crasher)
        return any("stopped by itself" in e["text"] for e in entries)

    await rig.eventually(crashed, timeout=20, what="the crash in the timeline")
    return {"name": name, "crasher": crasher, "deployed": deployed, "denied": denied, "qid": qid}


async def test_who_did_what_and_when(stack: Stack, story: dict[str, Any]) -> None:
    name = story["name"]
    entries = await timeline(stack, agent=name)
    assert [e["ts"] for e in entries] == sorted(e["ts"] for e in entries)  # oldest first

    spawn = find(entries, category="spawn", agent=name)
    assert spawn["who"] == DASHBOARD and spawn["who_kind"] == "operator"
    asked = find(entries, category="approval", approval=story["deployed"], kind="approval.queued")
    assert asked["who"] == "hm1nd" and asked["who_kind"] == "manager"
    deploy = find(entries, category="deploy", approval=story["deployed"])
    assert deploy["who"].startswith("operator via cli (") and deploy["who_kind"] == "operator"
    assert deploy["link"] == f"/approvals/{story['deployed']}/diff"
    # the rebuild lifecycle did for that approve is the operator's too
    rebuilt = find(entries, kind="agent.state", text=f"agent {name} rebuilt with its new config")
    assert rebuilt["who"].startswith("operator via cli (")
    deny = find(entries, category="deny", approval=story["denied"])
    assert deny["who"] == DASHBOARD and deny["note"] == "no shouting"
    assert "no shouting" in deny["text"]
    stop = find(entries, category="stop", agent=name)
    assert stop["who"].startswith("operator via cli (")


async def test_answers_and_crashes(stack: Stack, story: dict[str, Any]) -> None:
    entries = await timeline(stack)
    answer = find(entries, category="answer", question=story["qid"])
    assert answer["who"] == DASHBOARD and answer["note"] == "small"
    question = find(entries, category="question", question=story["qid"])
    assert question["who"] == "hm1nd" and question["link"] == f"/#question-{story['qid']}"
    crash = find(entries, agent=story["crasher"], category="stop")
    assert "stopped by itself" in crash["text"] and crash["who_kind"] == "system"


async def test_filters_since_kind_agent(stack: Stack, story: dict[str, Any]) -> None:
    denials = await timeline(stack, kind="deny")
    assert denials and {e["category"] for e in denials} == {"deny"}
    several = await timeline(stack, kind="deny,answer")
    assert {e["category"] for e in several} == {"deny", "answer"}
    family = await timeline(stack, kind="approval", agent=story["name"])
    assert {e["kind"].split(".")[0] for e in family} == {"approval"}
    assert await timeline(stack, since="2030-01-01T00:00:00+00:00") == []
    assert len(await timeline(stack, limit="2")) == 2


async def test_the_section_and_the_diff_page(stack: Stack, story: dict[str, Any]) -> None:
    async with logged_in(stack) as client:
        section = await client.get("/section/activity")
        assert section.status_code == 200
        assert "no shouting" in section.text
        assert f'href="/approvals/{story["denied"]}/diff"' in section.text
        page = await client.get(f"/approvals/{story['denied']}/diff")
        assert page.status_code == 200
        assert "+prompt = &#34;shout&#34;" in page.text or '+prompt = "shout"' in page.text
        assert "denied by" in page.text and "no shouting" in page.text
        assert (await client.get("/approvals/999999/diff")).status_code == 404
    async with httpx.AsyncClient(base_url=stack.url) as anonymous:
        assert (await anonymous.get("/api/activity")).status_code == 401


async def test_hive_log_and_events_on_the_cli(stack: Stack, story: dict[str, Any]) -> None:
    name = story["name"]
    code, out, err = await rig.hive_cli(
        stack.settings, "log", "--json", "--agent", name, "--kind", "deny", "--since", "1h"
    )
    assert code == 0, err
    (denied,) = json.loads(out)
    assert denied["approval"] == story["denied"] and denied["who"] == DASHBOARD
    code, out, err = await rig.hive_cli(stack.settings, "events", "--agent", name)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "KIND", "AGENT", "WHO", "WHAT"]
    assert any("deny" in ln and "no shouting" in ln and DASHBOARD in ln for ln in lines)
    assert any(f"hive diff {story['deployed']}" in ln for ln in lines)
    code, out, err = await rig.hive_cli(stack.settings, "log", "--since", "last week")
    assert code == 1 and "--since" in err


def test_words_for_events() -> None:
    ev = HiveEvent(
        kind="approval.resolved",
        ts=1.0,
        agent="coder",
        data={
            "id": 7,
            "kind": "ApplyCommit",
            "state": "failed",
            "sha": "ab" * 20,
            "error": "nix: boom",
            "decided_by": "operator via cli (a@b)",
        },
    )
    e = entry(ev, 5)
    assert isinstance(e, Entry)
    assert (e.category, e.approval, e.note) == ("fail", 7, "nix: boom")
    assert e.text == "approval #7 failed (deploy abababababab to coder)"
    assert matches(e, ["fail"]) and matches(e, ["approval"]) and not matches(e, ["deny"])
    assert matches(e, [], "coder") and not matches(e, [], "other")
    crash = entry(
        HiveEvent(
            kind="crash.detected",
            ts=1.0,
            agent="coder",
            data={"event": {"type": "ContainerCrash", "detail": "oom", "exit_code": 137}},
        ),
        2,
    )
    assert crash is not None and (crash.category, crash.who_kind) == ("crash", "system")
    assert crash.text == "agent coder stopped unexpectedly (exit code 137)" and crash.note == "oom"
    # each reason reads as itself, as in the manager's inbox (not as a long turn)
    for seq, (reason, why) in enumerate(
        (
            ("turn_too_long", "its turn is running too long"),
            ("login_needed", "the API refused its credentials (login needed)"),
        ),
        start=3,
    ):
        stuck = entry(
            HiveEvent(
                kind="stuck.detected",
                ts=1.0,
                agent="coder",
                data={"event": {"type": "AgentStuck", "reason": reason, "detail": "401"}},
            ),
            seq,
        )
        assert stuck is not None and stuck.text == f"agent coder looks stuck: {why}"
        assert (stuck.category, stuck.note) == ("stuck", "401")
    restart = entry(
        HiveEvent(
            kind="agent.state",
            ts=1.0,
            agent="coder",
            data={"state": "running", "previous": "running", "flag": "Restarting", "by": "hm1nd"},
        ),
        5,
    )
    assert restart is not None and (restart.category, restart.who_kind) == ("restart", "manager")
    assert entry(HiveEvent(kind="message.sent", ts=1.0), 1) is None
    assert entry(HiveEvent(kind="stats.turn", ts=1.0), 1) is None
    assert [who_kind(w) for w in ("operator via cli (x)", "hm1nd", "coder", "system", "")] == [
        "operator",
        "manager",
        "agent",
        "system",
        "system",
    ]


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
async def test_timeline_in_the_browser(
    browser: Browser, stack: Stack, story: dict[str, Any], width: int, height: int, tmp_path: Path
) -> None:
    async with open_page(
        browser, width=width, height=height, timeout_ms=30_000, console_errors=True
    ) as page:
        await log_in(page, stack.login_url)
        section = page.locator("#activity")
        rows = section.locator("li.ev")
        await expect(rows.first).to_be_visible()
        deny = section.locator("li.ev", has_text="no shouting")
        await expect(deny).to_contain_text(DASHBOARD)
        await expect(deny.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))

        # filter: only the denials
        await page.get_by_label("Show", exact=True).select_option("deny")
        visible = section.locator("li.ev:visible")
        await expect(visible.first).to_be_visible()
        assert {await r.get_attribute("data-category") for r in await visible.all()} == {"deny"}
        await expect(page.locator("#activity-count")).to_contain_text("shown")
        # by the manager, for this agent
        await page.get_by_label("Show", exact=True).select_option("")
        await page.get_by_label("Done by", exact=True).select_option("manager")
        await page.get_by_label("Agent", exact=True).fill(story["name"])
        for r in await visible.all():
            assert await r.get_attribute("data-who-kind") == "manager"
            assert await r.get_attribute("data-agent") == story["name"]
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        await page.screenshot(path=str(tmp_path / f"activity-{width}.png"))

        # live: a new decision appears without a reload, the filter still applies
        await page.get_by_role("button", name="Clear filters").click()
        await ask_operator(stack, f"Live at {width} px?")
        await expect(section.locator("li.ev", has_text=f"Live at {width} px?")).to_be_visible()

        # the link of a denial opens its diff with who decided
        await page.get_by_label("Show", exact=True).select_option("deny")
        link = deny.get_by_role("link", name=re.compile("see the diff"))
        await link.click()
        await expect(page).to_have_url(re.compile(rf"/approvals/{story['denied']}/diff$"))
        await expect(page.locator(".diff")).to_contain_text('+prompt = "shout"')
        await expect(page.locator("main")).to_contain_text("no shouting")


async def test_the_hub_keeps_the_timeline_in_order_without_repeats() -> None:
    from hyperhive.dashboard.hub import EventHub

    hub = EventHub(None, backfill_events=0, ring=10, coalesce_s=0.001, ping_s=30)  # type: ignore[arg-type]
    assert hub.activity_entries() is None  # not loaded: the section reads the stream
    hub._activity_ready = True  # as after start() read the last day

    def ev(event_kind: str, **data: object) -> HiveEvent:
        return HiveEvent(kind=event_kind, ts=1.0, agent="coder", data=data)

    hub.publish(ev("approval.resolved", id=1, kind="ApplyCommit", state="denied", note="no"), 5)
    hub.publish(ev("question.asked", id=2, question="?"), 3)  # replayed: read at start already
    hub.publish(ev("message.sent", id=9, sender="a", recipient="coder", body="hi"), 6)
    hub.publish(ev("agent.created", agent_kind="agent", port=8100, backend="process"), 7)
    entries = hub.activity_entries()
    assert entries is not None
    assert [(e.seq, e.category) for e in entries] == [(5, "deny"), (7, "spawn")]


async def test_a_restarted_dashboard_shows_what_happened_before(
    stack: Stack, story: dict[str, Any]
) -> None:
    """After being away (the dashboard restarted meanwhile), the section still
    has the day's entries: the hub reads them from HIVE_EVENTS at start."""
    settings = msgspec.structs.replace(
        stack.settings,
        dashboard=msgspec.structs.replace(
            stack.settings.dashboard, port=free_port(), flow_backfill_events=1
        ),
    )
    async with rig.running_service("dashboard", settings):
        other = Stack(
            settings,
            f"http://127.0.0.1:{settings.dashboard.port}",
            stack.nats,
            stack.operator,
            stack.manager,
        )
        async with logged_in(other) as client:
            section = (await client.get("/section/activity")).text
    assert "no shouting" in section and f"approval #{story['deployed']}" in section
