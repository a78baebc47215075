"""The agent page: a Litestar app over one :class:`~hyperhive.harness.loop.Harness`.

- ``GET /``: the terminal-themed live tail, prompt box, state badge, chips.
- ``GET /events``: SSE. A new stream gets ``reset``, the turn records of
  earlier harness runs (``hive.agent.<n>.turns`` through the broker), this
  run's recent records, then live ones. Live records carry
  ``id: <boot>:<n>``; a reconnecting EventSource sends it back as
  ``Last-Event-ID`` and gets only what it missed.
- ``GET /status``: the badge's data as JSON.
- ``POST /prompt``: ``{"text"}``: a slash command, or a prompt that becomes a turn.
- ``POST /cancel``: ends the running turn.
- ``GET/POST /login``: the operator gives claude's credentials (stored in the
  credentials dir only; the page never shows them again).
- ``GET/POST /auth``: the operator token form (when a token is configured).
- ``/terminal/ws``: WebSocket to a login shell on a PTY (terminal.py).
"""

from __future__ import annotations

import asyncio
import html as html_lib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.middleware import DefineMiddleware
from litestar.response import Redirect, Stream
from litestar.static_files import create_static_files_router

from hyperhive.common.webguard import session_cookie
from hyperhive.harness import creds
from hyperhive.harness.hub import Record
from hyperhive.harness.loop import CommandError, Harness
from hyperhive.harness.security import POLICY, SCOPE_KEY, Guard, Security, security
from hyperhive.harness.terminal import Shell, terminal_ws

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PING_S = 15.0
MAX_PROMPT_CHARS = 64 * 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_enc = msgspec.json.Encoder()
_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
)


class Deps:
    """What the handlers share (``app.state.deps``)."""

    def __init__(self, harness: Harness, security: Security) -> None:
        self.harness = harness
        self.security = security
        self.closing = asyncio.Event()  # set at shutdown: SSE streams and terminals end
        self.terminals: set[Shell] = set()  # open terminal sessions (terminal.py)


def _deps(request: Request[Any, Any, Any]) -> Deps:
    return request.app.state.deps  # type: ignore[no-any-return]


def _csrf(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get(SCOPE_KEY, ""))  # type: ignore[call-overload]


def render(name: str, **context: Any) -> str:
    return _templates.get_template(name).render(**context)


def _html(content: str, status: int = 200) -> Response[str]:
    return Response(content, media_type=MediaType.HTML, status_code=status)


# --- pages -----------------------------------------------------------------------


@get("/")
async def page(request: Request[Any, Any, Any]) -> Response[str]:
    d = _deps(request)
    return _html(
        render(
            "agent.html",
            agent=d.harness.cfg.agent,
            csrf=_csrf(request),
            status=d.harness.status(),
        )
    )


@get("/status")
async def status(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return _deps(request).harness.status()


# --- the live tail -----------------------------------------------------------------


def _frame(kind: str, data: bytes, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\n".encode() + b"data: " + data + b"\n\n"


def _record(rec: Record, boot: str) -> bytes:
    doc = msgspec.to_builtins(rec.event)
    doc["n"] = rec.n
    return _frame("turn", _enc.encode(doc), f"{boot}:{rec.n}")


def _resume_point(last_event_id: str, boot: str) -> int | None:
    """The local number to resume after, if the id is from this harness run."""
    prefix, _, n = last_event_id.partition(":")
    if prefix == boot and n.isdigit():
        return int(n)
    return None


async def _stream(d: Deps, after: int | None) -> AsyncIterator[bytes]:
    harness = d.harness
    hub = harness.hub
    with hub.subscribe() as sub:
        snapshot = hub.snapshot(after or 0)
        gap = (
            after is not None and after < hub.last_n and (not snapshot or snapshot[0].n > after + 1)
        )
        if after is None or gap:
            yield _frame("reset", b"{}")
            for ev in await harness.backfill():
                yield _frame("turn", _enc.encode(ev))
            snapshot = hub.snapshot(0)
        last = after or 0
        for rec in snapshot:
            yield _record(rec, hub.boot)
            last = rec.n
        yield _frame("status", _enc.encode(harness.status()))
        closing = asyncio.ensure_future(d.closing.wait())
        getter: asyncio.Future[Record] | None = None
        try:
            while not d.closing.is_set() and not sub.overflowed:
                if getter is None:
                    getter = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait(
                    {getter, closing}, timeout=PING_S, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    if not done:
                        yield b": ping\n\n"
                    continue
                rec = getter.result()
                getter = None
                if rec.n > last:
                    last = rec.n
                    yield _record(rec, hub.boot)
        finally:
            closing.cancel()
            if getter is not None:
                getter.cancel()


@get("/events")
async def events(request: Request[Any, Any, Any]) -> Stream:
    d = _deps(request)
    last = request.headers.get("last-event-id", "") or request.query_params.get("after", "")
    after = _resume_point(last, d.harness.hub.boot) if last else None
    return Stream(_stream(d, after), media_type="text/event-stream", headers=SSE_HEADERS)


# --- operator controls -------------------------------------------------------------


class PromptBody(msgspec.Struct):
    text: str


@post("/prompt")
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
    try:
        if text.startswith("/"):
            reply = await d.harness.command(text)
            return Response({"ok": True, "text": reply, "command": True}, status_code=200)
        await d.harness.operator_prompt(text)
    except CommandError as exc:
        return Response({"ok": False, "text": str(exc)}, status_code=400)
    return Response({"ok": True, "text": "queued as a turn", "command": False}, status_code=200)


@post("/cancel")
async def cancel(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    running = await _deps(request).harness.cancel()
    text = "cancelling the running turn" if running else "no turn is running"
    return Response({"ok": True, "cancelled": running, "text": text}, status_code=200)


# --- claude credentials --------------------------------------------------------------


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await request.form()
    return {k: str(v) for k, v in form.items()}


@get("/login")
async def login_page(request: Request[Any, Any, Any]) -> Response[str]:
    d = _deps(request)
    saved = request.query_params.get("saved") == "1"
    return _html(
        render(
            "login.html",
            agent=d.harness.cfg.agent,
            csrf=_csrf(request),
            current=creds.kind(d.harness.cfg.creds_dir),
            kinds=creds.KINDS,
            error="",
            saved=saved,
        )
    )


@post("/login")
async def login_save(request: Request[Any, Any, Any]) -> Response[Any]:
    d = _deps(request)
    fields = await _form(request)
    try:
        creds.store(d.harness.cfg.creds_dir, fields.get("kind", ""), fields.get("secret", ""))
    except creds.CredentialsError as exc:
        page_html = render(
            "login.html",
            agent=d.harness.cfg.agent,
            csrf=_csrf(request),
            current=creds.kind(d.harness.cfg.creds_dir),
            kinds=creds.KINDS,
            error=str(exc),
            saved=False,
        )
        return _html(page_html, 400)
    log.info("claude credentials stored", extra={"kind": fields.get("kind")})
    d.harness.credentials_changed()
    await d.harness.publish("state", d.harness.status())
    return Redirect("/login?saved=1", status_code=303)


# --- operator token --------------------------------------------------------------------


def token_page(csrf: str, error: str) -> bytes:
    return render("auth.html", csrf=csrf, error=error).encode()


@get("/auth")
async def auth_page(request: Request[Any, Any, Any]) -> Response[str]:
    return _html(render("auth.html", csrf=_csrf(request), error=""))


@post("/auth")
async def auth_check(request: Request[Any, Any, Any]) -> Response[Any]:
    sec = _deps(request).security
    fields = await _form(request)
    if not sec.token_required:
        return Redirect("/", status_code=303)
    if not sec.token_ok(fields.get("token", "").strip()):
        return _html(render("auth.html", csrf=_csrf(request), error="wrong token"), 403)
    resp: Response[Any] = Redirect("/", status_code=303)
    resp.headers["set-cookie"] = session_cookie(POLICY, sec)
    return resp


def _error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status = getattr(exc, "status_code", 500)
    if status >= 500:
        log.exception("agent page error", exc_info=exc)
    detail = getattr(exc, "detail", "") or "internal error"
    return Response(
        f"{status}: {html_lib.escape(str(detail))}",
        media_type=MediaType.TEXT,
        status_code=status,
    )


def create_app(harness: Harness, operator_token: str = "") -> Litestar:
    """The agent page app for ``harness``; ``operator_token`` guards it when set."""
    secrets = security(operator_token)
    deps = Deps(harness, secrets)
    app = Litestar(
        route_handlers=[
            page,
            status,
            events,
            prompt,
            cancel,
            login_page,
            login_save,
            auth_page,
            auth_check,
            terminal_ws,
            create_static_files_router(path="/static", directories=[HERE / "static"]),
        ],
        middleware=[
            DefineMiddleware(Guard, security=secrets, policy=POLICY, login_page=token_page)
        ],
        exception_handlers={Exception: _error},
        state=State({"deps": deps}),
        debug=False,
        logging_config=None,  # the process's logging is set up once, by serve_main
    )
    return app
