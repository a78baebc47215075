"""Cost and tokens, end to end: scripted answers with known usage → claude's
``result`` events → the harness's turn stats → the broker → ``hive usage``
and the dashboard's totals.

The real claude CLI runs against the scripted Anthropic API; broker and
lifecycle are the real services; the harness runs in this process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hyperhive.common.wire.broker import USAGE_KEYS
from hyperhive.dashboard import stats as dashboard_stats
from tests import rig
from tests.harness.conftest import Stack, agent_name, running_harness
from tests.scripted_anthropic import (
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_use,
)

pytestmark = pytest.mark.claude

IS_COMPACTION = mentions("--- notes.md ---")


def usage(inp: int, out: int, read: int = 0, write: int = 0) -> dict[str, int]:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }


# what the scripted model reports for each of its answers
TOOL_CALL = usage(1200, 40, read=15000, write=3000)
AFTER_TOOL = usage(310, 25, read=18000, write=200)
SECOND_TURN = usage(77, 11, read=21000)
COMPACTION = usage(2500, 900, write=1100)


def total(*answers: dict[str, int]) -> dict[str, int]:
    return {
        "input_tokens": sum(a["input_tokens"] for a in answers),
        "output_tokens": sum(a["output_tokens"] for a in answers),
        "cache_read_tokens": sum(a["cache_read_input_tokens"] for a in answers),
        "cache_creation_tokens": sum(a["cache_creation_input_tokens"] for a in answers),
    }


def tokens(doc: dict[str, Any]) -> dict[str, int]:
    return {k: int(doc[k]) for k in total()}


async def test_turn_and_compaction_usage_add_up(stack: Stack, api: ScriptedAnthropic) -> None:
    name = agent_name("u")
    await stack.spawn(name)
    api.reply(
        tool_use("mcp__hyperhive__send", {"to": "operator", "body": "on it"}),
        when=last_user_mentions("first-job"),
        usage=TOOL_CALL,
    )
    api.reply("sent", when=after_tool_results(1), usage=AFTER_TOOL)
    api.reply("done", when=last_user_mentions("second-job"), usage=SECOND_TURN)
    settings = stack.harness_settings(name, HIVE_HARNESS_NOTES_COMPACT_BYTES="2000")
    async with running_harness(settings) as h:
        await stack.send(name, "first-job")
        one = await h.turn_end(1)
        await stack.send(name, "second-job")
        two = await h.turn_end(2)
        assert one["outcome"] == two["outcome"] == "ok", (one, two)

        # each turn's tokens and model calls are its result event's usage and
        # num_turns; its cost is what the session's total_cost_usd grew by,
        # because --continue carries the session's cost (and modelUsage) over
        (r1,) = h.claude_events(1, "result")
        (r2,) = h.claude_events(2, "result")
        assert tokens(one["stats"]) == total(TOOL_CALL, AFTER_TOOL)
        assert tokens(two["stats"]) == total(SECOND_TURN)
        assert (one["stats"]["model_calls"], two["stats"]["model_calls"]) == (2, 1)
        assert (r1["num_turns"], r2["num_turns"]) == (2, 1)
        assert r2["session_id"] == r1["session_id"]
        assert r2["usage"]["input_tokens"] == SECOND_TURN["input_tokens"]  # this run's
        (cumulative,) = r2["modelUsage"].values()  # the session's so far
        assert (
            cumulative["inputTokens"] == total(TOOL_CALL, AFTER_TOOL, SECOND_TURN)["input_tokens"]
        )
        assert one["stats"]["cost_usd"] == pytest.approx(r1["total_cost_usd"], abs=1e-6)
        assert two["stats"]["cost_usd"] == pytest.approx(
            r2["total_cost_usd"] - r1["total_cost_usd"], abs=1e-6
        )
        assert 0 < two["stats"]["cost_usd"] < one["stats"]["cost_usd"]

        # a notes compaction between turns: its usage counts, it is not a turn
        notes = "".join(f"- fact {i}: the build server is ci{i}.example\n" for i in range(80))
        lines = notes.splitlines(keepends=True)
        api.reply("# Notes\n" + "".join(lines[:20]), when=IS_COMPACTION, usage=COMPACTION)
        h.harness.cfg.notes_path.write_text(notes)

        def compacted() -> bool:
            return any(
                r.event.get("phase") == "end" and r.event.get("replaced")
                for r in h.records("compaction")
            )

        await rig.eventually(compacted, timeout=60, what="the notes compacted")

    expected = total(TOOL_CALL, AFTER_TOOL, SECOND_TURN, COMPACTION)

    async def stored() -> dict[str, float] | None:
        points = (await stack.stats(name)).points
        sums = {k: sum(p.value for p in points if p.key == k) for k in (*USAGE_KEYS, "compactions")}
        return sums if sums["compactions"] == 1 else None

    sums = await rig.eventually(stored, timeout=15, what="the compaction's stats stored")
    assert tokens(sums) == expected
    assert sums["model_calls"] == 4  # 2 + 1 + the compaction's 1
    turn_cost = one["stats"]["cost_usd"] + two["stats"]["cost_usd"]
    assert sums["cost_usd"] > turn_cost  # the compaction cost something too

    # hive usage: one row per agent and UTC day, and the totals
    op = rig.operator_settings(stack.settings, stack.nats)
    code, out, err = await rig.hive_cli(op, "usage", "--agent", name, "--json")
    assert code == 0, err
    doc = json.loads(out)
    mine = doc["totals"][name]
    assert tokens(mine) == expected
    assert (mine["turns"], mine["model_calls"]) == (2, 4)
    assert mine["cost_usd"] == pytest.approx(sums["cost_usd"], abs=1e-6)
    assert sum(d["turns"] for d in doc["days"]) == 2
    code, out, _ = await rig.hive_cli(op, "usage", "--agent", name)
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["DAY", "AGENT", "TURNS", "CALLS"]
    assert rows[-1].split()[:4] == ["total", name, "2", "4"]

    # the dashboard's telemetry adds up the same rows the same way
    charts = dashboard_stats.charts((await stack.stats(name)).points, window_s=3600)
    assert tokens(charts["totals"]) == expected
    assert (charts["totals"]["turns"], charts["totals"]["model_calls"]) == (2, 4)
    series = charts["charts"]["tokens"]["series"]
    assert sum(series["cache read"]) == expected["cache_read_tokens"]
    assert sum(charts["charts"]["cost"]["series"]["USD"]) == pytest.approx(sums["cost_usd"])
