"""What every CLI command shares: the operator's NATS connection and output."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS

from hyperhive.common import actor, rpc, subjects
from hyperhive.common.config import Settings, load_settings
from hyperhive.common.errors import HiveError
from hyperhive.common.natsconn import connect

T = TypeVar("T", bound=msgspec.Struct)


async def operator_nats(settings: Settings, attempts: int = 2) -> NATS:
    """Connects as the operator (``_INBOX.operator`` replies); what this
    command changes is recorded as done by :func:`decided_by`."""
    actor.set_actor(decided_by())
    return await connect(
        settings.nats,
        name="hive-cli",
        inbox_prefix=settings.nats.inbox_prefix or subjects.operator_inbox_prefix(),
        attempts=attempts,
    )


async def call(
    settings: Settings,
    subject: str,
    payload: msgspec.Struct | None,
    reply: type[T],
    timeout: float | None = None,
) -> T:
    """One operator request on a fresh connection."""
    nc = await operator_nats(settings)
    try:
        return await rpc.request(
            nc, subject, payload, reply, timeout=timeout or settings.nats.request_timeout_s
        )
    finally:
        await nc.close()


def decided_by() -> str:
    """Who an operator decision from this command is recorded as."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = f"uid {os.getuid()}"
    return f"operator via cli ({user}@{socket.gethostname()})"


def run_command(body: Callable[[Settings], Awaitable[int | None]]) -> int:
    """Runs an async command body; a ``HiveError`` becomes one line and exit 1."""
    try:
        settings = load_settings()
        return asyncio.run(body(settings)) or 0
    except HiveError as exc:
        print(f"hive: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def print_json(value: Any) -> None:
    """Prints a wire value (or plain data) as JSON."""
    sys.stdout.write(json.dumps(msgspec.to_builtins(value), indent=2) + "\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Prints aligned columns; ``-`` for empty cells."""
    cells = [[("-" if c is None or c == "" else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fmt_ts(ts: float | None) -> str:
    """Local time of a timestamp, compact."""
    if not ts:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
