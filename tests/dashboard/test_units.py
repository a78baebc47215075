"""The dashboard's pure parts: the flow ring, diff parsing, chart series."""

from __future__ import annotations

import asyncio

import pytest

from hyperhive.common.wire.broker import StatPoint
from hyperhive.common.wire.events import HiveEvent
from hyperhive.dashboard import diff, stats
from hyperhive.dashboard.hub import EventHub, Item, Ring


def item(seq: int) -> Item:
    return Item(seq, ("a", "b"), f"id: {seq}\n\n".encode())


def test_ring_keeps_a_window_and_cursors_survive_trimming() -> None:
    ring = Ring(4)
    for seq in range(1, 11):
        ring.append(item(seq))
    kept = [i.seq for i in ring.since(0)]
    assert kept[-4:] == [7, 8, 9, 10]
    assert len(kept) < 8  # trimmed
    cursor = ring.end
    ring.append(item(11))
    assert [i.seq for i in ring.since(cursor)] == [11]
    assert [i.seq for i in ring.since(ring.tail(2))] == [10, 11]
    assert [i.seq for i in ring.since(ring.after_seq(9))] == [10, 11]
    assert ring.since(ring.after_seq(11)) == []


async def test_hub_fans_one_event_out_to_every_stream_with_filters() -> None:
    hub = EventHub(None, backfill_events=0, ring=100, coalesce_s=0.001, ping_s=30)  # type: ignore[arg-type]
    streams = [
        hub.stream(hub.flow, hub.flow.end),
        hub.stream(hub.flow, hub.flow.end, agent="bob"),
        hub.stream(hub.flow, hub.flow.end, agent="carol"),
    ]
    for s in streams:
        assert await anext(s) == b"retry: 2000\n\n"
    waiting = [asyncio.ensure_future(anext(s)) for s in streams]
    sent = HiveEvent(
        kind="message.sent",
        ts=1.0,
        agent="bob",
        data={"id": 7, "sender": "alice", "recipient": "bob", "body": "<b>hi</b>", "deliveries": 0},
    )
    hub.publish(sent, seq=42)
    all_, bob = await asyncio.wait_for(asyncio.gather(waiting[0], waiting[1]), 5)
    assert all_ == bob
    assert all_.startswith(b"id: 42\nevent: message\ndata: {")
    assert b'"body":"<b>hi</b>"' in all_  # JSON, shown with textContent by the page
    assert not waiting[2].done()  # carol is not a party
    await hub.stop()
    for w in waiting[2:]:
        w.cancel()


def test_diff_is_split_into_files_with_classed_lines() -> None:
    text = (
        "diff --git a/agent.toml b/agent.toml\n"
        "index 1..2 100644\n--- a/agent.toml\n+++ b/agent.toml\n"
        '@@ -1,2 +1,2 @@\n model = ""\n-prompt = ""\n+prompt = "x"\n'
        "diff --git a/notes/new.md b/notes/new.md\nnew file mode 100644\n"
        "--- /dev/null\n+++ b/notes/new.md\n@@ -0,0 +1 @@\n+hello\n"
    )
    files = diff.parse(text)
    assert [f.path for f in files] == ["agent.toml", "notes/new.md"]
    assert (files[0].added, files[0].removed) == (1, 1)
    kinds = [line.kind for line in files[0].lines]
    assert kinds == ["meta", "meta", "meta", "meta", "hunk", "ctx", "del", "add"]
    assert (files[1].added, files[1].removed) == (1, 0)  # "+++" is a header, not a line


def test_chart_series_from_turn_rows() -> None:
    now = 10_000.0
    points: list[StatPoint] = []
    for i, (ms, code, tools) in enumerate(((1000, 0, 2), (2000, 0, 4), (9000, 1, 0))):
        ts = now - 120 + i * 10
        points += [
            StatPoint(agent="a", ts=ts, key="duration_ms", value=ms),
            StatPoint(agent="a", ts=ts, key="exit_code", value=code),
            StatPoint(agent="a", ts=ts, key="tool_calls", value=tools),
            StatPoint(agent="a", ts=ts, key="messages_sent", value=1),
            StatPoint(agent="a", ts=ts, key="inbox_depth", value=i),
        ]
    data = stats.charts(points, window_s=3600, now=now)
    assert data["turns"] == 3
    assert data["since_last_turn_s"] == 100
    c = data["charts"]
    assert c["tool_calls"]["series"]["tool calls/turn"] == [2, 4, 0]
    assert c["since_last_turn"]["series"]["s since previous turn"] == [None, 10, 10]
    assert sum(c["messages"]["series"]["sent"]) == 3
    assert sum(c["turns_per_min"]["series"]["turns/min"]) == 3  # 60 s buckets
    assert sum(c["exit_codes"]["series"]["exit 1"]) == 1
    p95 = [v for v in c["duration"]["series"]["p95 s"] if v is not None]
    assert max(p95) == 9.0
    assert all(len(s) == len(c["duration"]["x"]) for s in c["duration"]["series"].values())


def test_usage_totals_and_charts_count_turns_and_compactions() -> None:
    now = 10_000.0
    rows = {
        now - 100: {"duration_ms": 5, "input_tokens": 10, "output_tokens": 2,
                    "cache_read_tokens": 900, "cache_creation_tokens": 40,
                    "model_calls": 2, "cost_usd": 0.25},
        now - 50: {"input_tokens": 300, "output_tokens": 30, "model_calls": 1,
                   "cost_usd": 0.5, "compactions": 1},  # a compaction: no duration_ms
        now - 7200: {"duration_ms": 5, "input_tokens": 99, "cost_usd": 9.0},  # before the window
    }  # fmt: skip
    points = [
        StatPoint(agent="a", ts=ts, key=k, value=v)
        for ts, kv in rows.items()
        for k, v in kv.items()
    ]
    data = stats.charts(points, window_s=3600, now=now)
    assert data["turns"] == 1
    assert data["totals"] == {
        "turns": 1,
        "model_calls": 3,
        "input_tokens": 310,
        "output_tokens": 32,
        "cache_read_tokens": 900,
        "cache_creation_tokens": 40,
        "cost_usd": 0.75,
    }
    tokens = data["charts"]["tokens"]["series"]
    assert (sum(tokens["input"]), sum(tokens["cache write"])) == (310, 40)
    assert sum(data["charts"]["cost"]["series"]["USD"]) == 0.75
    assert sum(data["charts"]["turns_per_min"]["series"]["turns/min"]) == 1


def test_approval_queue_counts_what_waits_at_each_sample() -> None:
    now = 7200.0  # one-minute buckets over the last hour: samples at 3660, 3720, ... 7200
    spans = [(3600.0, 3700.0), (3650.0, None), (5000.0, 5000.5), (7100.0, None)]
    queue = stats.approval_queue(spans, window_s=3600, now=now)
    waiting = dict(zip(queue["x"], queue["series"]["waiting approvals"], strict=True))
    assert waiting[3660.0] == 2  # the first two
    assert waiting[3720.0] == 1  # the first was resolved at 3700
    assert waiting[5040.0] == 1  # the third came and went between samples
    assert waiting[7200.0] == 2


def test_the_operator_token_comes_from_settings_or_the_systemd_credential(tmp_path) -> None:
    from hyperhive.common.config import load_settings
    from hyperhive.common.errors import ConfigError
    from hyperhive.dashboard.security import load_operator_token, operator_security

    def ds(**env: str):
        return load_settings(env, config_file=None).dashboard

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "operator-token").write_text("from-systemd\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert load_operator_token(ds(), env) == "from-systemd"
    assert load_operator_token(ds(HIVE_DASHBOARD_TOKEN="inline"), env) == "inline"
    own = tmp_path / "own"
    own.write_text("from-file\n")
    assert load_operator_token(ds(HIVE_DASHBOARD_TOKEN_FILE=str(own)), env) == "from-file"
    assert load_operator_token(ds(), {}) == ""
    with pytest.raises(ConfigError, match="no operator token"):
        operator_security(ds(), b"label")
    assert not operator_security(ds(HIVE_DASHBOARD_INSECURE_NO_TOKEN="true"), b"l").token_required
    with pytest.raises(ConfigError, match="token_label"):
        operator_security(ds(HIVE_DASHBOARD_TOKEN="t", HIVE_DASHBOARD_TOKEN_LABEL='a"b'), b"l")


def test_inbox_panel_shows_a_system_events_fields_beside_its_text() -> None:
    from hyperhive.common.wire.broker import HistoryItem
    from hyperhive.common.wire.events import AgentStuck
    from hyperhive.dashboard.render import Renderer

    stuck = AgentStuck(agent="w1", reason="login_needed", detail="<401> refused")
    items = [
        HistoryItem(
            id=5,
            sender="system",
            recipient="hm1nd",
            body="w1 is stuck",
            ts=1.0,
            state="handed_out",
            deliveries=1,
            event=stuck,
        ),
        HistoryItem(id=6, sender="a", recipient="hm1nd", body="hi", ts=2.0, state="committed"),
    ]
    page = Renderer()("panel_inbox.html", messages=items, down=None, name="hm1nd")
    assert '<dd data-field="type">AgentStuck</dd>' in page
    assert '<dd data-field="reason">login_needed</dd>' in page
    assert '<dd data-field="detail">&lt;401&gt; refused</dd>' in page  # escaped
    assert '<pre class="msg-body">w1 is stuck</pre>' in page  # the text claude reads, as before
    assert page.count('class="system-event"') == 1  # none for the plain message
