"""``hive send``, ``hive messages``, ``hive inbox``, ``hive message-status``, ``hive tail``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import BinaryIO

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

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
from hyperhive.common import subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BadRequest, Unavailable
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
from hyperhive.common.wire.events import HiveEvent

log = logging.getLogger(__name__)

PREVIEW_CHARS = 80
TAIL_BATCH = 256  # records per pull request
TAIL_WAIT_S = 5.0  # how long one pull request waits for a record
TAIL_RETRY_S = 1.0  # pause before a new consumer after an error
TAIL_INACTIVE_S = 60.0  # the server drops the consumer of a tail that died


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
    d = event.data
    verb = event.kind.removeprefix("message.")
    extra = f" (delivery {d.get('deliveries')})" if verb == "redelivered" else ""
    body = _preview(str(d.get("body", "")))
    return (
        f"{fmt_ts(event.ts)}  #{d.get('id')} {d.get('sender')} -> {d.get('recipient')}  "
        f"{verb}{extra}: {body}"
    )


async def follow_messages(
    js: JetStreamContext,
    on_event: Callable[[HiveEvent], None],
    *,
    since: float | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Follows the ``message.*`` records of HIVE_EVENTS until cancelled.

    From ``since`` (unix time) or, without it, from the next record. An
    ephemeral pull consumer filtered on the message family reads the stream;
    the operator's credentials allow that (JetStream API requests, replies on
    its own inbox). When the consumer is lost (NATS restarted, the connection
    was down), a new one starts right after the last record handed to
    ``on_event``: a reconnect leaves no gap and repeats nothing.

    Raises:
        Unavailable: HIVE_EVENTS cannot be read at start.
    """
    family = subjects.event_family("message")
    decoder = msgspec.json.Decoder(HiveEvent)
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM)
    except (nats.errors.Error, OSError) as exc:
        raise Unavailable(f"cannot read {subjects.EVENTS_STREAM}: {exc}") from None
    # where the next consumer starts: a time until the first record, then a sequence
    start_time = None if since is None else datetime.fromtimestamp(since, UTC)
    next_seq = info.state.last_seq + 1 if since is None else None
    while True:
        name = f"tail-{uuid.uuid4().hex[:16]}"
        config = ConsumerConfig(
            name=name,
            filter_subject=family,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=TAIL_INACTIVE_S,
            mem_storage=True,
        )
        if next_seq is None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = start_time
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = next_seq
        try:
            await js.add_consumer(subjects.EVENTS_STREAM, config)
            sub = await js.pull_subscribe_bind(
                durable=None, stream=subjects.EVENTS_STREAM, name=name
            )
        except (nats.errors.Error, OSError) as exc:
            log.debug("tail: no consumer yet: %s", exc)
            await asyncio.sleep(TAIL_RETRY_S)
            continue
        if ready is not None:
            ready()
            ready = None
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=TAIL_BATCH, timeout=TAIL_WAIT_S)
                except nats.errors.TimeoutError:
                    # nothing new; or the consumer is gone (NotFoundError)
                    await js.consumer_info(subjects.EVENTS_STREAM, name)
                    continue
                for msg in msgs:
                    next_seq = msg.metadata.sequence.stream + 1
                    try:
                        event = decoder.decode(msg.data)
                    except msgspec.DecodeError:
                        continue
                    on_event(event)
        except BrokenPipeError:
            raise  # on_event's reader is gone: no consumer helps
        except (nats.errors.Error, OSError) as exc:
            # consumer lost or connection down: a new consumer picks up after next_seq
            log.debug("tail: consumer %s lost: %s", name, exc)
            await asyncio.sleep(TAIL_RETRY_S)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):  # else the server drops it when inactive
                await asyncio.wait_for(
                    js.delete_consumer(subjects.EVENTS_STREAM, name), timeout=TAIL_RETRY_S
                )


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
