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

from hyperhive.common.wire.broker import StatPoint

TURN_KEY = "duration_ms"  # exactly one per turn
TOOL_TOTAL = "tool_calls"
TOOL_PREFIXES = ("tool_calls.", "tool.")


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
    ``turns`` (count) and ``charts``: name -> {``x``, ``series``: {label: ys}}.
    """
    now = time.time() if now is None else now
    start = now - window_s
    turns = [t for t in group_turns(points) if t.ts >= start and TURN_KEY in t.values]
    step = bucket_seconds(window_s)
    n = max(1, math.ceil(window_s / step))
    xs = [start + (i + 1) * step for i in range(n)]  # a bucket is plotted at its end

    def index(ts: float) -> int:
        return min(n - 1, max(0, int((ts - start) // step)))

    per_bucket: list[list[Turn]] = [[] for _ in range(n)]
    for t in turns:
        per_bucket[index(t.ts)].append(t)

    turns_per_min = [len(b) * 60.0 / step for b in per_bucket]
    p50: list[float | None] = []
    p95: list[float | None] = []
    for b in per_bucket:
        durations = sorted(t.values[TURN_KEY] / 1000.0 for t in b)
        p50.append(_quantile(durations, 0.50) if durations else None)
        p95.append(_quantile(durations, 0.95) if durations else None)
    sent = [sum(t.values.get("messages_sent", 0.0) for t in b) for b in per_bucket]
    received = [sum(t.values.get("messages_received", 0.0) for t in b) for b in per_bucket]

    codes: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    for t in turns:
        if "exit_code" in t.values:
            code = int(t.values["exit_code"])
            label = "ok (0)" if code == 0 else f"exit {code}"
            codes[label][index(t.ts)] += 1

    turn_x = [t.ts for t in turns]
    gaps: list[float | None] = [None]
    gaps += [b.ts - a.ts for a, b in itertools.pairwise(turns)]
    last_ts = turns[-1].ts if turns else _last_turn(points)

    return {
        "window_s": window_s,
        "turns": len(turns),
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
            "messages": {"x": xs, "series": {"sent": sent, "received": received}},
            "since_last_turn": {"x": turn_x, "series": {"s since previous turn": gaps}},
        },
    }


def _last_turn(points: list[StatPoint]) -> float | None:
    """The latest turn even if it is older than the window."""
    stamps = [p.ts for p in points if p.key == TURN_KEY]
    return max(stamps) if stamps else None
