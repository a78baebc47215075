"""``hive log`` (alias ``hive events``): the activity timeline of the hive."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import msgspec

from hyperhive.cli.client import operator_nats, print_table, run_command
from hyperhive.common import activity
from hyperhive.common.config import Settings
from hyperhive.common.timeparse import parse_since

FOLLOW_POLL_S = 2.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "log",
        aliases=["events"],
        help="what happened: spawns, deploys, denials, answers, crashes, restarts (who, when)",
        description=(
            "The activity timeline, oldest first: every spawn, deploy, denial, answer, "
            "crash, stuck report, start, stop and restart, with who did it and when."
        ),
    )
    p.add_argument(
        "--since", help="only after: unix time, ISO time, or an age like 10m, 2h, 1d (default 1d)"
    )
    p.add_argument(
        "--kind",
        action="append",
        default=[],
        help=(
            "only these (repeat or comma-separate): "
            + ", ".join(activity.CATEGORIES)
            + ", or an event kind such as approval.resolved"
        ),
    )
    p.add_argument("--agent", default="", help="only what concerns this agent or what it did")
    p.add_argument("--limit", type=int, default=100, help="at most this many, newest (default 100)")
    p.add_argument("--follow", "-f", action="store_true", help="then keep printing new entries")
    p.add_argument("--json", action="store_true", help="a JSON list (with --follow: JSON lines)")
    p.set_defaults(func=_log)


def _clock(ts: float, now: float) -> str:
    today = time.strftime("%Y-%m-%d", time.localtime(now))
    day = time.strftime("%Y-%m-%d", time.localtime(ts))
    clock = time.strftime("%H:%M:%S", time.localtime(ts))
    return clock if day == today else f"{day} {clock}"


def _row(e: activity.Entry, now: float) -> list[object]:
    what = e.text + (f" [hive diff {e.approval}]" if e.approval is not None else "")
    if e.note and e.category in ("fail", "crash", "stuck"):
        what += f": {e.note}"
    return [_clock(e.ts, now), e.category, e.agent, e.who, what]


HEADERS = ["time", "kind", "agent", "who", "what"]


def _log(args: argparse.Namespace) -> int:
    kinds = [k for value in args.kind for k in value.split(",") if k.strip()]

    async def body(settings: Settings) -> int:
        since = parse_since(args.since) if args.since else None
        nc = await operator_nats(settings)
        js = nc.jetstream()
        try:
            entries = await activity.read(
                js, since=since, kinds=kinds, agent=args.agent, limit=max(1, args.limit)
            )
            if args.json and not args.follow:
                sys.stdout.write(json.dumps(msgspec.to_builtins(entries), indent=2) + "\n")
                return 0
            now = time.time()
            if args.json:
                for e in entries:
                    print(json.dumps(msgspec.to_builtins(e)), flush=True)
            elif entries:
                print_table(HEADERS, [_row(e, now) for e in entries])
            elif not args.follow:
                print("nothing happened in that time", file=sys.stderr)
            if not args.follow:
                return 0
            last_seq = entries[-1].seq if entries else 0
            last_ts = entries[-1].ts if entries else (since or now)
            while True:
                await asyncio.sleep(FOLLOW_POLL_S)
                new = [
                    e
                    for e in await activity.read(
                        js, since=last_ts - 1, kinds=kinds, agent=args.agent, limit=1000
                    )
                    if e.seq > last_seq
                ]
                for e in new:
                    if args.json:
                        print(json.dumps(msgspec.to_builtins(e)), flush=True)
                    else:
                        print("  ".join(str(c) for c in _row(e, time.time())), flush=True)
                if new:
                    last_seq, last_ts = new[-1].seq, new[-1].ts
        finally:
            await nc.close()

    return run_command(body)
