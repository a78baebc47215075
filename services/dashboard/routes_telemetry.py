"""Telemetry: per-agent chart series (JSON for uPlot) from the broker's stats."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.enums import MediaType
from litestar.params import FromQuery

from hyperhive.common import endpoints as E
from hyperhive.common.errors import HiveError
from hyperhive.common.names import check_agent_name
from hyperhive.common.wire.approvals import ApprovalsRequest
from hyperhive.common.wire.broker import (
    USAGE_KEYS,
    StatsRequest,
    UsageRequest,
)
from hyperhive.dashboard import stats
from hyperhive.dashboard.web import HTTP_STATUS, deps

WINDOWS = (3600, 6 * 3600, 24 * 3600)  # what the window picker offers, seconds
MAX_POINTS = 20_000
COST_DAYS = 14  # the hive's cost-per-day chart
USAGE_DAYS = 7  # the per-day usage table: today and the days before (UTC)
DAY_S = 86400


@get("/api/stats")
async def agent_stats(
    request: Request[Any, Any, Any], agent: FromQuery[str], window: FromQuery[int] = 3600
) -> Response[Any]:
    """Chart series of ``agent`` over the last ``window`` seconds."""
    window = window if window in WINDOWS else WINDOWS[0]
    now = time.time()
    since = min(now - window, stats.day_start(now))  # the window, and today for the summary
    try:
        name = check_agent_name(agent, allow_manager=True)
        reply = await deps(request).hive.read(
            E.TURN_STATS,
            StatsRequest(agent=name, since=since, limit=MAX_POINTS),
        )
    except HiveError as exc:
        return _error(exc)
    data = stats.charts(reply.points, window_s=window, now=now)
    # no chart without data: an empty one is left out, not drawn
    data["charts"] = {k: c for k, c in data["charts"].items() if stats.has_data(c)}
    return Response(
        {"agent": name, **data, "summary": stats.summary(reply.points, now=now)},
        media_type=MediaType.JSON,
    )


@get("/api/stats/hive")
async def hive_stats(
    request: Request[Any, Any, Any], window: FromQuery[int] = 3600
) -> Response[Any]:
    """Hive-wide series: approvals waiting for the operator over the window,
    and the cost of every agent per day over the last two weeks."""
    window = window if window in WINDOWS else WINDOWS[0]
    now = time.time()
    hive = deps(request).hive
    try:
        recent = await hive.read(E.APPROVALS_LIST, ApprovalsRequest(limit=1000))
        # every pending one counts, however old
        pending = await hive.read(E.APPROVALS_LIST, ApprovalsRequest(state="pending", limit=1000))
    except HiveError as exc:
        return _error(exc)
    spans = {a.id: (a.created_at, a.resolved_at) for a in [*recent.approvals, *pending.approvals]}
    queue = stats.approval_queue(list(spans.values()), window_s=window, now=now)
    charts: dict[str, Any] = {"approval_queue": queue}
    try:
        first_day = stats.day_start(now - (COST_DAYS - 1) * 86_400)
        costs = await hive.read(
            E.TURN_STATS,
            StatsRequest(key="cost_usd", since=first_day, limit=MAX_POINTS),
        )
        charts["cost_per_day"] = stats.cost_per_day(costs.points, days=COST_DAYS, now=now)
    except HiveError as exc:  # the queue still shows without the broker
        charts["cost_per_day"] = {"x": [], "series": {}, "error": str(exc)}
    return Response(
        {"start": now - window, "end": now, "charts": charts}, media_type=MediaType.JSON
    )


@get("/api/usage")
async def usage(request: Request[Any, Any, Any]) -> Response[Any]:
    """Turns, model calls, tokens and cost per agent and UTC day (the last
    ``USAGE_DAYS`` days), with each agent's total over them."""
    today = time.time() // DAY_S * DAY_S
    try:
        reply = await deps(request).hive.read(
            E.USAGE,
            UsageRequest(since=today - (USAGE_DAYS - 1) * DAY_S),
        )
    except HiveError as exc:
        return _error(exc)
    keys = ("turns", *USAGE_KEYS)
    totals: dict[str, dict[str, float]] = {}
    for d in reply.days:
        t = totals.setdefault(d.agent, dict.fromkeys(keys, 0))
        for k in keys:
            t[k] += getattr(d, k)
    for t in totals.values():
        t["cost_usd"] = round(t["cost_usd"], 6)
    return Response(
        {"days": msgspec.to_builtins(reply.days), "totals": totals, "window_days": USAGE_DAYS},
        media_type=MediaType.JSON,
    )


def _error(exc: HiveError) -> Response[Any]:
    return Response(
        {"error": str(exc)}, status_code=HTTP_STATUS.get(exc.code, 500), media_type=MediaType.JSON
    )


HANDLERS = [agent_stats, hive_stats, usage]
