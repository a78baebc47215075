"""``hive usage``: turns, model calls, tokens and cost per agent and day."""

from __future__ import annotations

import argparse

from hyperhive.cli.client import call, print_json, print_table, run_command
from hyperhive.cli.cmd_messages import parse_since
from hyperhive.common import endpoints as E
from hyperhive.common.config import Settings
from hyperhive.common.wire.broker import UsageDay, UsageRequest

HEADERS = ["day", "agent", "turns", "calls", "input", "output", "cache read", "cache write", "usd"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "usage",
        help="turns, model calls, tokens and cost per agent and UTC day, with totals",
    )
    p.add_argument("--agent", help="only this agent")
    p.add_argument(
        "--since", help="only turns after: unix time, ISO time, or an age like 10m, 2h, 7d"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_usage)


def totals(days: list[UsageDay]) -> dict[str, UsageDay]:
    """Each agent's days added up (``day`` = ``total``), and ``*`` for all agents."""
    out: dict[str, UsageDay] = {}
    for d in days:
        for key in (d.agent, "*"):
            t = out.setdefault(key, UsageDay(agent=key, day="total"))
            t.turns += d.turns
            t.model_calls += d.model_calls
            t.input_tokens += d.input_tokens
            t.output_tokens += d.output_tokens
            t.cache_read_tokens += d.cache_read_tokens
            t.cache_creation_tokens += d.cache_creation_tokens
            t.cost_usd = round(t.cost_usd + d.cost_usd, 6)
    return out


def _row(d: UsageDay) -> list[object]:
    return [
        d.day,
        d.agent,
        d.turns,
        d.model_calls,
        d.input_tokens,
        d.output_tokens,
        d.cache_read_tokens,
        d.cache_creation_tokens,
        f"{d.cost_usd:.4f}",
    ]


def _usage(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> None:
        since = parse_since(args.since) if args.since else None
        reply = await call(
            settings,
            E.USAGE,
            UsageRequest(agent=args.agent, since=since),
        )
        sums = totals(reply.days)
        if args.json:
            print_json({"days": reply.days, "totals": sums})
            return
        rows = [_row(d) for d in reply.days]
        rows += [_row(t) for key, t in sorted(sums.items()) if key != "*"]
        if "*" in sums and len(sums) > 2:
            rows.append(_row(sums["*"]))
        print_table(HEADERS, rows)

    return run_command(body)
