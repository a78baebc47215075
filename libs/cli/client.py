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
from hyperhive.common import endpoints as E
from hyperhive.common.config import Settings, load_settings
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import HiveError, NotFound, RequestTimeout, Unavailable
from hyperhive.common.names import check_agent_name
from hyperhive.common.natsconn import connect
from hyperhive.common.redact import mask, mask_data, mask_diff
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.lifecycle import AgentsRequest
from hyperhive.common.wire.states import DESTROYED

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
    endpoint: Endpoint[Any, T],
    payload: msgspec.Struct,
    timeout: float | None = None,
) -> T:
    """One operator request on a fresh connection; the reply as the operator
    may see it (:func:`shown_reply`)."""
    nc = await operator_nats(settings)
    try:
        answer = await rpc.call(
            nc, endpoint, payload, timeout=timeout or settings.nats.request_timeout_s
        )
    finally:
        await nc.close()
    return shown_reply(answer)


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
    except HiveError as exc:  # a build error may quote a config
        print(f"hive: {exc if _show_secrets else mask(str(exc))}", file=sys.stderr)
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


# --- secrets ---------------------------------------------------------------------
# What the services answer passes the one masking rule (hyperhive.common.redact)
# on its way to the operator unless the command was given --show-secrets; main()
# sets this once per run.
_show_secrets = False


def set_show_secrets(on: bool) -> None:
    """Whether this run prints secrets in clear (the command's ``--show-secrets``)."""
    global _show_secrets
    _show_secrets = on


def shown_reply(reply: T) -> T:
    """A service's reply as the operator may see it: every text in it masked
    (a ``diff`` field read as a diff), unless ``--show-secrets``. Every reply
    the CLI prints comes through :func:`call`, so no command can forget it."""
    if _show_secrets:
        return reply
    data = msgspec.to_builtins(reply)
    diff = data.pop("diff", None) if isinstance(data, dict) else None
    data = mask_data(data)
    if isinstance(diff, str):
        data["diff"] = mask_diff(diff)
    return msgspec.convert(data, type(reply))


# --- agent names ---------------------------------------------------------------


async def require_agent(
    settings: Settings, name: str, *, destroyed_ok: bool = False, operator_ok: bool = False
) -> None:
    """The one check of an agent name given on the command line: the agent
    exists (lifecycle's registry: the manager and drafts included).

    Args:
        destroyed_ok: a destroyed agent is fine (its messages are history).
        operator_ok: ``operator`` and ``system`` (senders that are no
            agents) are fine too.

    When lifecycle does not answer, the command goes on after one warning
    line: the operator may still read a broker's inbox during an outage.

    Raises:
        BadRequest: not an agent name.
        NotFound: no such agent, or it is destroyed and that is not fine.
    """
    if operator_ok and name in (subjects.OPERATOR, subjects.SYSTEM):
        return
    check_agent_name(name, allow_manager=True)
    try:
        reply = await call(
            settings,
            E.AGENTS,
            AgentsRequest(include_destroyed=True),
        )
    except (Unavailable, RequestTimeout) as exc:
        print(f"hive: warning: agent {name!r} not checked: {exc}", file=sys.stderr)
        return
    states = {a.name: a.state for a in reply.agents}
    if name not in states:
        # a two-step spawn's draft is registered too (destroy discards it);
        # what it may do is the service's to say
        drafts = await call(settings, E.DRAFTS, Empty())
        if any(d.name == name for d in drafts.drafts):
            return
        raise NotFound(f"no agent named {name!r}")
    if states[name] == DESTROYED and not destroyed_ok:
        raise NotFound(f"agent {name!r} is destroyed")
