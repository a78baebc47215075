"""Turn statistics (the broker's ``(agent, ts, key, value)`` rows) as chart series.

The harness publishes one ``TurnStats`` per turn; the broker stores its
fields as rows sharing the turn's timestamp. Per-tool counts may be stored
as ``tool_calls.<tool>`` rows, a total as ``tool_calls``: both are read.
Every series is aligned on one x axis (seconds) as uPlot wants.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from hyperhive.common.wire.broker import TURN_KEY, USAGE_KEYS, StatPoint

TOOL_TOTAL = "tool_calls"
TOOL_PREFIXES = ("tool_calls.", "tool.")
SENT_TO_PREFIX = "sent_to."  # sends by recipient kind (peer, operator, manager)
MCP_PREFIX = "mcp__hyperhive__"
TOP_TOOLS = 6  # tools charted by name; the rest add up as "other"


@dataclass
class Turn:
    ts: float
    values: dict[str, float] = field(default_factory=dict)

    def tool_calls(self) -> float | None:
        if TOOL_TOTAL in self.values:
            return self.values[TOOL_TOTAL]
        per_tool = [v for k, v in self.values.items() if k.startswith(TOOL_PREFIXES)]
        return sum(per_tool) if per_tool else None


def group_turns(points: list[StatPoint]) -> list[Turn]:
    """Rows sharing a timestamp are one turn; sorted by time."""
    by_ts: dict[float, Turn] = {}
    for p in points:
        by_ts.setdefault(p.ts, Turn(p.ts)).values[p.key] = p.value
    return sorted(by_ts.values(), key=lambda t: t.ts)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def bucket_seconds(window_s: float) -> float:
    """About 120 buckets per window, never below a minute."""
    return max(60.0, window_s / 120)


def charts(points: list[StatPoint], *, window_s: float, now: float | None = None) -> dict:
    """The telemetry of one agent over the last ``window_s`` seconds.

    Returns a JSON-able dict: ``last_turn_ts``, ``since_last_turn_s``,
    ``turns`` (count), ``totals`` (turns and the usage keys: model calls,
    tokens, cost, notes compactions included) and ``charts``: name ->
    {``x``, ``series``: {label: ys}}.
    """
    now = time.time() if now is None else now
    start = now - window_s
    groups = [t for t in group_turns(points) if t.ts >= start]
    turns = [t for t in groups if TURN_KEY in t.values]
    step = bucket_seconds(window_s)
    n = max(1, math.ceil(window_s / step))
    xs = [start + (i + 1) * step for i in range(n)]  # a bucket is plotted at its end

    def index(ts: float) -> int:
        return min(n - 1, max(0, int((ts - start) // step)))

    per_bucket: list[list[Turn]] = [[] for _ in range(n)]
    for t in turns:
        per_bucket[index(t.ts)].append(t)
    # usage: turns and the notes compactions between them (not turns)
    usage_bucket: list[list[Turn]] = [[] for _ in range(n)]
    for t in groups:
        usage_bucket[index(t.ts)].append(t)

    def usage(key: str) -> list[float]:
        return [sum(t.values.get(key, 0.0) for t in b) for b in usage_bucket]

    turns_per_min = [len(b) * 60.0 / step for b in per_bucket]
    p50: list[float | None] = []
    p95: list[float | None] = []
    for b in per_bucket:
        durations = sorted(t.values[TURN_KEY] / 1000.0 for t in b)
        p50.append(_quantile(durations, 0.50) if durations else None)
        p95.append(_quantile(durations, 0.95) if durations else None)
    received = [sum(t.values.get("messages_received", 0.0) for t in b) for b in per_bucket]
    messages = _sent_series(per_bucket)
    messages["received"] = received

    codes: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    for t in turns:
        if "exit_code" in t.values:
            codes[_exit_label(t)][index(t.ts)] += 1

    turn_x = [t.ts for t in turns]
    gaps: list[float | None] = [None]
    gaps += [b.ts - a.ts for a, b in itertools.pairwise(turns)]
    last_ts = turns[-1].ts if turns else _last_turn(points)

    totals = {k: sum(t.values.get(k, 0.0) for t in groups) for k in USAGE_KEYS}
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    return {
        "window_s": window_s,
        "start": start,
        "end": now,
        "turns": len(turns),
        "totals": {"turns": len(turns), **totals},
        "last_turn_ts": last_ts,
        "since_last_turn_s": (now - last_ts) if last_ts is not None else None,
        "charts": {
            "turns_per_min": {"x": xs, "series": {"turns/min": turns_per_min}},
            "duration": {"x": xs, "series": {"p50 s": p50, "p95 s": p95}},
            "tool_calls": {
                "x": turn_x,
                "series": {"tool calls/turn": [t.tool_calls() for t in turns]},
            },
            "exit_codes": {"x": xs, "series": dict(sorted(codes.items())) or {"ok (0)": [0.0] * n}},
            "inbox_depth": {
                "x": turn_x,
                "series": {"inbox depth": [t.values.get("inbox_depth") for t in turns]},
            },
            "messages": {"x": xs, "series": messages},
            "tools": {"x": xs, "series": _tool_series(per_bucket)},
            "since_last_turn": {"x": turn_x, "series": {"s since previous turn": gaps}},
            "tokens": {
                "x": xs,
                "series": {
                    "input": usage("input_tokens"),
                    "output": usage("output_tokens"),
                    "cache read": usage("cache_read_tokens"),
                    "cache write": usage("cache_creation_tokens"),
                },
            },
            "cost": {"x": xs, "series": {"USD": usage("cost_usd")}},
            "notes": {
                "x": turn_x,
                "series": {"notes KiB": [_kib(t.values.get("notes_bytes")) for t in turns]},
            },
        },
    }


def _exit_label(turn: Turn) -> str:
    """ok, ok after the compact-and-retry, or the failing exit code."""
    code = int(turn.values["exit_code"])
    if code != 0:
        return f"exit {code}"
    return "ok after compact retry" if turn.values.get("compact_retry") else "ok (0)"


def _sent_series(per_bucket: list[list[Turn]]) -> dict[str, list[float]]:
    """Sends per bucket, split by recipient kind where the turns say so."""
    kinds = sorted(
        {
            key.removeprefix(SENT_TO_PREFIX)
            for b in per_bucket
            for t in b
            for key in t.values
            if key.startswith(SENT_TO_PREFIX)
        }
    )
    if not kinds:
        return {"sent": [sum(t.values.get("messages_sent", 0.0) for t in b) for b in per_bucket]}

    def sent(kind: str, bucket: list[Turn]) -> float:
        return sum(t.values.get(SENT_TO_PREFIX + kind, 0.0) for t in bucket)

    return {f"sent → {kind}": [sent(kind, b) for b in per_bucket] for kind in kinds}


def _tool_name(key: str) -> str | None:
    for prefix in TOOL_PREFIXES:
        if key.startswith(prefix):
            return key.removeprefix(prefix).removeprefix(MCP_PREFIX)
    return None


def _tool_series(per_bucket: list[list[Turn]]) -> dict[str, list[float]]:
    """Calls per tool per bucket: the busiest tools by name, the rest as "other"."""
    totals: dict[str, float] = defaultdict(float)
    for b in per_bucket:
        for t in b:
            for key, value in t.values.items():
                if (name := _tool_name(key)) is not None:
                    totals[name] += value
    ranked = sorted(totals, key=lambda name: (-totals[name], name))
    named = ranked[:TOP_TOOLS]
    series: dict[str, list[float]] = {name: [0.0] * len(per_bucket) for name in named}
    if len(ranked) > TOP_TOOLS:
        series["other"] = [0.0] * len(per_bucket)
    for i, b in enumerate(per_bucket):
        for t in b:
            for key, value in t.values.items():
                if (name := _tool_name(key)) is not None:
                    series[name if name in series else "other"][i] += value
    return series


def _kib(value: float | None) -> float | None:
    return None if value is None else round(value / 1024, 2)


def approval_queue(
    approvals: list[tuple[float, float | None]], *, window_s: float, now: float | None = None
) -> dict:
    """Approvals waiting for the operator over time, from ``(created, resolved)`` pairs.

    Sampled at each bucket's end; an approval counts while it is created and
    not yet resolved.
    """
    now = time.time() if now is None else now
    start = now - window_s
    step = bucket_seconds(window_s)
    n = max(1, math.ceil(window_s / step))
    xs = [start + (i + 1) * step for i in range(n)]
    waiting = [float(sum(1 for c, r in approvals if c <= x and (r is None or r > x))) for x in xs]
    return {"x": xs, "series": {"waiting approvals": waiting}}


def _last_turn(points: list[StatPoint]) -> float | None:
    """The latest turn even if it is older than the window."""
    stamps = [p.ts for p in points if p.key == TURN_KEY]
    return max(stamps) if stamps else None


def day_start(ts: float) -> float:
    """Local midnight of the day ``ts`` falls in."""
    lt = time.localtime(ts)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))


def summary(points: list[StatPoint], *, now: float | None = None) -> dict:
    """One agent's compact row: today's turns, cost and tokens, the last turn's
    duration and the inbox depth it saw."""
    now = time.time() if now is None else now
    midnight = day_start(now)
    turns = [t for t in group_turns(points) if TURN_KEY in t.values]
    today = [t for t in turns if t.ts >= midnight]
    last = turns[-1] if turns else None
    tokens = sum(
        t.values.get("input_tokens", 0.0) + t.values.get("output_tokens", 0.0) for t in today
    )
    return {
        "turns_today": len(today),
        "cost_today_usd": round(sum(t.values.get("cost_usd", 0.0) for t in today), 4),
        "tokens_today": int(tokens),
        "last_turn_ts": last.ts if last else None,
        "last_turn_s": round(last.values[TURN_KEY] / 1000.0, 2) if last else None,
        "inbox_depth": last.values.get("inbox_depth") if last else None,
        "failed_today": sum(1 for t in today if t.values.get("exit_code", 0.0) != 0),
    }


def has_data(chart: dict) -> bool:
    """A chart worth drawing: some value that is neither missing nor zero."""
    return any(v for ys in chart["series"].values() for v in ys if v is not None)


def cost_per_day(points: list[StatPoint], *, days: int, now: float | None = None) -> dict:
    """The hive's cost (USD, every agent) per local day, the last ``days`` days;
    x is each day's midnight."""
    now = time.time() if now is None else now
    starts = [day_start(now)]
    for _ in range(days - 1):
        starts.insert(0, day_start(starts[0] - 43_200))  # noon of the day before
    totals = [0.0] * len(starts)
    for p in points:
        if p.key != "cost_usd" or p.ts < starts[0]:
            continue
        i = max(i for i, s in enumerate(starts) if s <= p.ts)
        totals[i] += p.value
    return {"x": starts, "series": {"cost USD": [round(v, 4) for v in totals]}}
