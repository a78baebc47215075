"""``hive send``, ``hive messages``, ``hive inbox``, ``hive message-status``, ``hive tail``."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from datetime import datetime

import msgspec
from nats.aio.msg import Msg

from hyperhive.cli.client import (
    call,
    fmt_ts,
    operator_nats,
    print_json,
    print_table,
    run_command,
)
from hyperhive.common import subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BadRequest
from hyperhive.common.wire.broker import (
    AdminSendRequest,
    HistoryItem,
    HistoryReply,
    InboxRequest,
    MessagesRequest,
    MessageStatus,
    SendReply,
    StatusRequest,
)
from hyperhive.common.wire.events import HiveEvent

PREVIEW_CHARS = 80
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the broker's verbs."""
    p = sub.add_parser("send", help="send a message to an agent as the operator")
    p.add_argument("agent")
    p.add_argument("text", nargs="+", help="the message (words are joined by spaces)")
    p.add_argument("--key", help="idempotency key: resending with it stores nothing new")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_send)

    p = sub.add_parser("messages", help="message history")
    p.add_argument("--agent", help="only messages sent or received by this agent")
    p.add_argument(
        "--since", help="only messages after: unix time, ISO time, or an age like 10m, 2h, 1d"
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_messages)

    p = sub.add_parser("inbox", help="messages an agent has not acknowledged yet")
    p.add_argument("agent")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_inbox)

    p = sub.add_parser("message-status", help="delivery receipt of one message")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = sub.add_parser("tail", help="follow messages live (sent, delivered, acked) until Ctrl-C")
    p.add_argument("--agent", help="only messages to or from this agent")
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    p.set_defaults(func=_tail)


def parse_since(value: str, now: float | None = None) -> float:
    """``1700000000``, ``2026-01-02T03:04``, or an age (``90s``, ``10m``, ``2h``, ``1d``).

    Raises:
        BadRequest: none of those.
    """
    now = time.time() if now is None else now
    value = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise BadRequest(
            f"--since {value!r}: use unix time, ISO time (2026-01-02T03:04) or an age (10m, 2h)"
        ) from None


def _preview(body: str) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


def _print_history(items: list[HistoryItem]) -> None:
    print_table(
        ["id", "time", "from", "to", "state", "n", "body"],
        [
            [m.id, fmt_ts(m.ts), m.sender, m.recipient, m.state, m.deliveries, _preview(m.body)]
            for m in items
        ],
    )


def _send(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        text = " ".join(args.text)
        reply = await call(
            settings,
            subjects.admin("broker", "send"),
            AdminSendRequest(to=args.agent, body=text, idempotency_key=args.key),
            SendReply,
        )
        if args.json:
            print_json(reply)
        else:
            print(f"sent #{reply.id} to {args.agent} at {fmt_ts(reply.ts)}")
        return 0

    return run_command(body)


def _messages(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        since = parse_since(args.since) if args.since else None
        reply = await call(
            settings,
            subjects.admin("broker", "messages"),
            MessagesRequest(agent=args.agent, since=since, limit=args.limit),
            HistoryReply,
        )
        if args.json:
            print_json(reply.messages)
        else:
            _print_history(reply.messages)
        return 0

    return run_command(body)


def _inbox(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        reply = await call(
            settings,
            subjects.admin("broker", "inbox"),
            InboxRequest(agent=args.agent),
            HistoryReply,
        )
        if args.json:
            print_json(reply.messages)
        elif not reply.messages:
            print(f"{args.agent}: inbox empty")
        else:
            _print_history(reply.messages)
        return 0

    return run_command(body)


def _status(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        s = await call(
            settings, subjects.admin("broker", "status"), StatusRequest(id=args.id), MessageStatus
        )
        if args.json:
            print_json(s)
            return 0
        print(f"message #{s.id} {s.sender} -> {s.recipient}: {s.state}")
        print(f"  committed  {fmt_ts(s.created_at)}")
        if s.delivered_at:
            again = f", redelivered {s.redeliveries}x" if s.redeliveries else ""
            print(f"  handed out {fmt_ts(s.delivered_at)} ({s.deliveries} deliveries{again})")
        if s.acked_at:
            print(f"  acked      {fmt_ts(s.acked_at)}")
        return 0

    return run_command(body)


def format_event(event: HiveEvent) -> str:
    """One line for a ``message.*`` event."""
    d = event.data
    verb = event.kind.removeprefix("message.")
    extra = f" (delivery {d.get('deliveries')})" if verb == "redelivered" else ""
    body = _preview(str(d.get("body", "")))
    return (
        f"{fmt_ts(event.ts)}  #{d.get('id')} {d.get('sender')} -> {d.get('recipient')}  "
        f"{verb}{extra}: {body}"
    )


def _tail(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        nc = await operator_nats(settings)
        decoder = msgspec.json.Decoder(HiveEvent)

        async def on_msg(msg: Msg) -> None:
            try:
                event = decoder.decode(msg.data)
            except msgspec.DecodeError:
                return
            d = event.data
            if args.agent and args.agent not in (d.get("sender"), d.get("recipient")):
                return
            if args.json:
                line = json.dumps(msgspec.to_builtins(event))
            else:
                line = format_event(event)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        try:
            await nc.subscribe(subjects.event_family("message"), cb=on_msg)
            await nc.flush()
            if not args.json:
                print("following messages (Ctrl-C to stop)", file=sys.stderr, flush=True)
            await asyncio.Event().wait()  # until Ctrl-C
        finally:
            await nc.close()
        return 0

    return run_command(body)
