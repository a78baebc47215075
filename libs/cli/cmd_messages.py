"""``hive send``, ``hive messages``, ``hive inbox``, ``hive message-status``, ``hive tail``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import BinaryIO

import msgspec
from nats.js import JetStreamContext

from hyperhive.cli.client import (
    call,
    fmt_ts,
    operator_nats,
    print_json,
    print_table,
    require_agent,
    run_command,
)
from hyperhive.common import endpoints as E
from hyperhive.common import follow, subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BadRequest
from hyperhive.common.redact import mask_data
from hyperhive.common.timeparse import parse_since
from hyperhive.common.wire.broker import (
    AdminSendRequest,
    HistoryItem,
    InboxRequest,
    MessagesRequest,
    PruneRequest,
    StatusRequest,
)
from hyperhive.common.wire.events import (
    HiveEvent,
    MessageEventData,
    MessageRedelivered,
    event_data,
)

log = logging.getLogger(__name__)

PREVIEW_CHARS = 80


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the broker's verbs."""
    p = sub.add_parser("send", help="send a message to an agent as the operator")
    p.add_argument("agent")
    p.add_argument(
        "text",
        nargs="+",
        help="the message (words are joined by spaces); '-' alone: read it from stdin",
    )
    p.add_argument("--key", help="idempotency key: resending with it stores nothing new")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_send)

    p = sub.add_parser("messages", help="message history")
    p.add_argument("--agent", help="only messages sent or received by this agent")
    p.add_argument(
        "--since", help="only messages after: unix time, ISO time, or an age like 10m, 2h, 1d"
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument(
        "--prune-before",
        metavar="TIME",
        help="delete the acked messages created before: unix time, ISO time, or an age "
        "like 30d (pending messages stay); prints how many",
    )
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
    p.add_argument(
        "--since",
        help="first replay the events after: unix time, ISO time, or an age like 10m, 2h, 1d",
    )
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    p.set_defaults(func=_tail)


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


def read_body(stdin: BinaryIO, limit: int) -> str:
    """A message body from stdin (``hive send <agent> -``), at most ``limit``
    bytes of UTF-8; one trailing newline is dropped.

    Raises:
        BadRequest: over the limit, or not UTF-8 text.
    """
    data = stdin.read(limit + 1)
    if len(data) > limit:
        raise BadRequest(
            f"the message on stdin is over the limit of {limit} bytes (HIVE_BROKER_MAX_BODY_BYTES)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the message on stdin is not UTF-8 text") from None
    return text.removesuffix("\n")


def _send(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        if args.text == ["-"]:
            if sys.stdin.isatty():
                print("hive send: type the message, end it with Ctrl-D", file=sys.stderr)
            text = read_body(sys.stdin.buffer, settings.broker.max_body_bytes)
        else:
            text = " ".join(args.text)
        await require_agent(settings, args.agent)
        reply = await call(
            settings,
            E.ADMIN_SEND,
            AdminSendRequest(to=args.agent, body=text, idempotency_key=args.key),
        )
        if args.json:
            print_json(reply)
        else:
            print(f"sent #{reply.id} to {args.agent} at {fmt_ts(reply.ts)}")
        return 0

    return run_command(body)


PRUNE_TIMEOUT_S = 600.0  # a first prune of a long history deletes many rows


def _messages(args: argparse.Namespace) -> int:
    if args.prune_before is not None:
        return _prune(args)

    async def body(settings: Settings) -> int:
        since = parse_since(args.since) if args.since else None
        if args.agent:
            await require_agent(settings, args.agent, destroyed_ok=True, operator_ok=True)
        reply = await call(
            settings,
            E.MESSAGES,
            MessagesRequest(agent=args.agent, since=since, limit=args.limit),
        )
        if args.json:
            print_json(reply.messages)
        else:
            _print_history(reply.messages)
        return 0

    return run_command(body)


def _prune(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        if args.agent or args.since:
            raise BadRequest("--prune-before deletes by time only: no --agent or --since")
        before = parse_since(args.prune_before)
        reply = await call(
            settings,
            E.PRUNE,
            PruneRequest(before=before),
            timeout=PRUNE_TIMEOUT_S,
        )
        if args.json:
            print_json(reply)
        else:
            print(f"pruned {reply.deleted} acked messages created before {fmt_ts(reply.before)}")
        return 0

    return run_command(body)


def _inbox(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        await require_agent(settings, args.agent, destroyed_ok=True, operator_ok=True)
        reply = await call(
            settings,
            E.INBOX,
            InboxRequest(agent=args.agent),
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
        s = await call(settings, E.ADMIN_STATUS, StatusRequest(id=args.id))
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
    verb = event.kind.removeprefix("message.")
    d = event_data(event)
    if not isinstance(d, MessageEventData):
        return f"{fmt_ts(event.ts)}  {verb}"
    extra = f" (delivery {d.deliveries})" if isinstance(d, MessageRedelivered) else ""
    return (
        f"{fmt_ts(event.ts)}  #{d.id} {d.sender} -> {d.recipient}  "
        f"{verb}{extra}: {_preview(d.body)}"
    )


async def follow_messages(
    js: JetStreamContext,
    on_event: Callable[[HiveEvent], None],
    *,
    since: float | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Follows the ``message.*`` records of HIVE_EVENTS until cancelled.

    From ``since`` (unix time) or, without it, from the next record; a
    reconnect leaves no gap and repeats nothing (:func:`follow.follow`).

    Raises:
        Unavailable: HIVE_EVENTS cannot be read at start.
    """
    family = subjects.event_family("message")
    async for _seq, event in follow.follow(js, (family,), since=since, ready=ready):
        on_event(event)


def _tail(args: argparse.Namespace) -> int:
    async def body(settings: Settings) -> int:
        since = parse_since(args.since) if args.since else None
        if args.agent:
            await require_agent(settings, args.agent, destroyed_ok=True, operator_ok=True)
        nc = await operator_nats(settings)

        def on_event(event: HiveEvent) -> None:
            d = event.data
            if args.agent and args.agent not in (d.get("sender"), d.get("recipient")):
                return
            # HIVE_EVENTS holds masked data; records stored before that was the
            # rule are masked here (no --show-secrets: the stream has no clear text)
            event.data = mask_data(d)
            if args.json:
                line = json.dumps(msgspec.to_builtins(event))
            else:
                line = format_event(event)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        def ready() -> None:
            if not args.json:
                print("following messages (Ctrl-C to stop)", file=sys.stderr, flush=True)

        try:
            await follow_messages(nc.jetstream(), on_event, since=since, ready=ready)
        finally:
            await nc.close()
        return 0

    return run_command(body)
