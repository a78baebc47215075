"""The agent page's API: a Litestar app over one :class:`~hyperhive.harness.loop.Harness`,
served on a unix socket in the agent's own run dir (``run/page.sock``), never
on a TCP port.

The operator reaches it only through the dashboard, which serves the page
itself (``/agents/<name>/``, HTML/JS/CSS are the dashboard's) behind its
operator login and proxies ``/agents/<name>/api/...`` here. The socket is
visible to this agent's own sandbox and to the host, nobody else: no other
agent can read this page, its tail or open its terminal. So there is no
token, CSRF or Host check here; the agent itself may call its own API (it
could do all of it from its own Bash anyway).

- ``GET /api/status``: the badge's data as JSON.
- ``GET /api/events``: SSE. A new stream gets ``reset``, the turn records of
  earlier harness runs (``hive.agent.<n>.turns`` through the broker), this
  run's recent records, then live ones. Live records carry
  ``id: <boot>:<n>``; a reconnecting EventSource sends it back as
  ``Last-Event-ID`` and gets only what it missed.
- ``POST /api/prompt``: ``{"text"}``: a slash command, or a prompt that becomes a turn.
  A command and its reply are also an ``operator`` record (``"recorded": true``).
- ``POST /api/cancel``: ends the running turn. The request and its reply are
  also an ``operator`` record in the tail, ahead of the turn's end
  (``"recorded": true`` in the answer: the page shows the record, not the answer).
- ``POST /api/credentials``: ``{"kind", "secret"}``: claude's credentials
  (stored in the credentials dir only; never shown again).
- ``/api/terminal``: WebSocket to a login shell on a PTY (terminal.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

from hyperhive.common import sse
from hyperhive.harness import creds
from hyperhive.harness.hub import turn_frame
from hyperhive.harness.loop import CANCELLING, NOTHING_TO_CANCEL, CommandError, Harness
from hyperhive.harness.terminal import Shell, terminal_ws

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 64 * 1024


class Deps:
    """What the handlers share (``app.state.deps``)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.closing = asyncio.Event()  # set at shutdown: terminals end
        self.terminals: set[Shell] = set()  # open terminal sessions (terminal.py)

    def close(self) -> None:
        """At shutdown: ends the live tails and the terminals."""
        self.closing.set()
        self.harness.hub.close()


def _deps(request: Request[Any, Any, Any]) -> Deps:
    return request.app.state.deps  # type: ignore[no-any-return]


@get("/api/status")
async def status(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return _deps(request).harness.status()


# --- the live tail -----------------------------------------------------------------


def _resume_point(last_event_id: str, boot: str) -> int | None:
    """The local number to resume after, if the id is from this harness run."""
    prefix, _, n = last_event_id.partition(":")
    if prefix == boot and n.isdigit():
        return int(n)
    return None


async def _stream(d: Deps, after: int | None) -> AsyncIterator[bytes]:
    harness = d.harness
    hub = harness.hub
    ring = hub.fanout.ring
    cursor = ring.after_key(after or 0)
    first = ring.since(cursor, cursor + 1)
    gap = after is not None and after < hub.last_n and (not first or first[0].key > after + 1)
    if after is None or gap:
        yield sse.frame("reset", b"{}")
        for ev in await harness.backfill():
            yield turn_frame(ev)
        cursor = ring.base
    end = ring.end
    kept = b"".join(i.frame for i in ring.since(cursor, end))
    if kept:
        yield kept
    yield sse.json_frame("status", harness.status())
    async for chunk in hub.fanout.follow(end):
        yield chunk


@get("/api/events")
async def events(request: Request[Any, Any, Any]) -> Stream:
    d = _deps(request)
    last = request.headers.get("last-event-id", "") or request.query_params.get("after", "")
    after = _resume_point(last, d.harness.hub.boot) if last else None
    return sse.response(_stream(d, after))


# --- operator controls -------------------------------------------------------------


class PromptBody(msgspec.Struct):
    text: str


@post("/api/prompt")
async def prompt(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    d = _deps(request)
    try:
        body = msgspec.json.decode(await request.body(), type=PromptBody)
    except msgspec.DecodeError as exc:
        return Response({"ok": False, "text": f"bad request: {exc}"}, status_code=400)
    text = body.text.strip()
    if not text:
        return Response({"ok": False, "text": "empty prompt"}, status_code=400)
    if len(text) > MAX_PROMPT_CHARS:
        return Response({"ok": False, "text": "prompt too long"}, status_code=400)
    if text.startswith("/"):
        # "recorded": the command and its reply are also a record in the tail
        # (the page shows that one, and a reload's backfill keeps it)
        try:
            reply = await d.harness.command(text)
        except CommandError as exc:
            return Response({"ok": False, "text": str(exc), "recorded": True}, status_code=400)
        return Response(
            {"ok": True, "text": reply, "command": True, "recorded": True}, status_code=200
        )
    try:
        await d.harness.operator_prompt(text)
    except CommandError as exc:
        return Response({"ok": False, "text": str(exc)}, status_code=400)
    return Response({"ok": True, "text": "queued as a turn", "command": False}, status_code=200)


@post("/api/cancel")
async def cancel(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    running = await _deps(request).harness.cancel()
    text = CANCELLING if running else NOTHING_TO_CANCEL
    return Response(
        {"ok": True, "cancelled": running, "text": text, "recorded": True}, status_code=200
    )


# --- claude credentials --------------------------------------------------------------


class CredentialsBody(msgspec.Struct):
    kind: str
    secret: str


@post("/api/credentials")
async def credentials(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    d = _deps(request)
    try:
        body = msgspec.json.decode(await request.body(), type=CredentialsBody)
    except msgspec.DecodeError as exc:
        return Response({"ok": False, "text": f"bad request: {exc}"}, status_code=400)
    try:
        creds.store(d.harness.cfg.creds_dir, body.kind, body.secret)
    except creds.CredentialsError as exc:
        return Response({"ok": False, "text": str(exc)}, status_code=400)
    log.info("claude credentials stored", extra={"kind": body.kind})
    d.harness.credentials_changed()
    await d.harness.publish("state", d.harness.status())
    return Response({"ok": True, "current": creds.kind(d.harness.cfg.creds_dir)}, status_code=200)


def _error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status = getattr(exc, "status_code", 500)
    if status >= 500:
        log.exception("agent page error", exc_info=exc)
    detail = getattr(exc, "detail", "") or "internal error"
    return Response({"ok": False, "text": f"{status}: {detail}"}, status_code=status)


def create_app(harness: Harness) -> Litestar:
    """The agent page's API app for ``harness`` (served on its unix socket)."""
    deps = Deps(harness)
    return Litestar(
        route_handlers=[status, events, prompt, cancel, credentials, terminal_ws],
        exception_handlers={Exception: _error},
        state=State({"deps": deps}),
        debug=False,
        logging_config=None,  # the process's logging is set up once, by serve_main
    )
