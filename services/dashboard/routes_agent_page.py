"""The agent pages: served by the dashboard, their API proxied to each harness.

- ``GET /agents/<name>/``: the page (live tail, prompt, badge, terminal). Its
  HTML, JS and CSS are the dashboard's; the harness serves only an API.
- ``GET/POST /agents/<name>/credentials``: claude's credentials form; the
  post is handed on as JSON (the harness stores it, the page never shows it).
- ``/agents/<name>/api/{status,events,prompt,cancel}``: proxied to the
  harness's unix socket, or over NATS to the page relay of the agent's node
  (:mod:`hyperhive.dashboard.harnesslink` chooses; this module does not care).
- ``/agents/<name>/api/terminal``: the terminal's WebSocket, proxied frame by
  frame.

All of it sits behind the dashboard's guard (operator login, CSRF on posts,
the WebSocket's Origin and CSRF check, the Host allow-list). What comes back
from a harness is the agent's, so untrusted: only the content type expected
for that path is passed on (JSON, or ``text/event-stream`` for the tail), as
that type, with ``Content-Security-Policy: sandbox; default-src 'none'`` and
``nosniff``; anything else is refused with 502. Requests to the harness
carry none of the operator's headers (no cookie, no Authorization, no CSRF
token): only the body's type, ``Accept`` and ``Last-Event-ID``. A tail that
breaks (its harness or node relay gone) ends with an ``event: gone`` whose
data is ``{"text": why}``, written by the dashboard, so the page can say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from litestar import Request, Response, WebSocket, get, post, route, websocket
from litestar.enums import MediaType
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath
from litestar.response import Redirect, Stream
from websockets.exceptions import ConnectionClosed

from hyperhive.common.errors import BadRequest, HiveError, NotFound, Unavailable
from hyperhive.common.names import check_agent_name
from hyperhive.common.wire.states import OFFLINE, TURN_STATES
from hyperhive.dashboard.harnesslink import Terminal
from hyperhive.dashboard.web import deps, field, form_fields, html, page_context

log = logging.getLogger(__name__)

JSON = "application/json"
SSE = "text/event-stream"
# (method, path under api/) → the content type the harness must answer with
API: dict[tuple[str, str], str] = {
    ("GET", "status"): JSON,
    ("GET", "events"): SSE,
    ("POST", "prompt"): JSON,
    ("POST", "cancel"): JSON,
}
MAX_BODY_BYTES = 256 * 1024  # requests to and JSON answers from a harness
# on top of the guard's own (its CSP, nosniff, no framing): a proxied answer
# opened as a document runs nothing and loads nothing
PROXIED_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "no-store",
}
SSE_HEADERS = {**PROXIED_HEADERS, "X-Accel-Buffering": "no"}
KINDS = ("api_key", "oauth_token", "credentials_json")  # the harness's creds.KINDS
# the harness's badge states (docs/turn-loop.md); anything else renders as offline
MAX_TEXT = 500  # a harness's error text shown on the credentials form
TERMINAL_SIZE = (80, 24)
IDENTITY_JSON = {"accept": JSON, "accept-encoding": "identity"}


def _agent(name: str) -> str:
    return check_agent_name(name, allow_manager=True)


def _base(name: str) -> str:
    return f"/agents/{name}/"


def _refuse(status: int, text: str) -> Response[str]:
    return Response(
        f"{status}: {text}",
        status_code=status,
        media_type=MediaType.TEXT,
        headers=PROXIED_HEADERS,
    )


def _media(response: httpx.Response) -> str:
    """The answer's media type, '' for one sent compressed (never decoded here)."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return ""
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_json(response: httpx.Response) -> bytes:
    """The body of a JSON answer, at most MAX_BODY_BYTES.

    Raises:
        Unavailable: another content type, or too long.
    """
    if _media(response) != JSON:
        raise Unavailable(f"the agent page answered {_media(response)!r}, not JSON")
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Unavailable("the agent page's answer is too long")
    return body


async def _status(name: str, request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The harness's status, reduced to what the page's first render shows
    (an offline page if it does not answer within the section timeout)."""
    d = deps(request)
    doc: Any = {}
    try:
        async with asyncio.timeout(d.settings.section_timeout_s):
            async with await d.link.client(name) as client:
                async with client.stream("GET", "/api/status", headers=IDENTITY_JSON) as r:
                    if r.status_code == 200:
                        doc = json.loads(await _read_json(r))
    except (HiveError, httpx.HTTPError, ValueError, TimeoutError) as exc:
        log.info("agent page of %s does not answer: %s", name, exc)
    doc = doc if isinstance(doc, dict) else {}
    state = doc.get("state")
    model = doc.get("model")
    current = doc.get("credentials")
    return {
        "state": state if state in TURN_STATES else OFFLINE,
        "model": model[:100] if isinstance(model, str) else "",
        "credentials": current if current in KINDS else "",
    }


# --- the page -------------------------------------------------------------------------


@get("/agents/{name:str}")
async def agent_page(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
    agent = _agent(name)
    d = deps(request)
    status = await _status(agent, request)
    ctx = page_context(request)
    return html(
        d.render("agent.html", agent=agent, base=_base(agent), status=status, csrf=ctx["csrf"])
    )


@get("/agents/{name:str}/credentials")
async def credentials_form(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
    agent = _agent(name)
    status = await _status(agent, request)
    return _credentials_page(request, agent, status["credentials"], "", 200)


def _credentials_page(
    request: Request[Any, Any, Any], agent: str, current: str, error: str, code: int
) -> Response[str]:
    page = deps(request).render(
        "agent_credentials.html",
        agent=agent,
        base=_base(agent),
        csrf=page_context(request)["csrf"],
        current=current,
        kinds=KINDS,
        error=error,
        saved=request.query_params.get("saved") == "1",
    )
    return html(page, code)


@post("/agents/{name:str}/credentials")
async def credentials_save(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
    agent = _agent(name)
    fields = await form_fields(request)
    doc = {"kind": field(fields, "kind"), "secret": (fields.get("secret") or [""])[0]}
    error = ""
    try:
        async with await deps(request).link.client(agent) as client:
            async with client.stream(
                "POST", "/api/credentials", json=doc, headers=IDENTITY_JSON
            ) as r:
                answer = json.loads(await _read_json(r))
        if not (isinstance(answer, dict) and answer.get("ok") is True):
            text = answer.get("text") if isinstance(answer, dict) else None
            error = str(text)[:MAX_TEXT] if text else f"not stored (HTTP {r.status_code})"
    except (HiveError, httpx.HTTPError, ValueError) as exc:
        error = f"not stored: {exc}"[:MAX_TEXT]
    if not error:
        log.info("claude credentials handed to %s", agent, extra={"kind": doc["kind"]})
        return Redirect(f"{_base(agent)}credentials?saved=1", status_code=303)
    status = await _status(agent, request)
    return _credentials_page(request, agent, status["credentials"], error, 400)


# --- the API proxy --------------------------------------------------------------------


def _upstream_headers(request: Request[Any, Any, Any], expected: str) -> dict[str, str]:
    """What the harness gets of the operator's request: nothing that identifies them."""
    out = {"accept": expected, "accept-encoding": "identity"}
    last = request.headers.get("last-event-id")
    if last and len(last) <= 64:
        out["last-event-id"] = last
    return out


async def _request_body(request: Request[Any, Any, Any]) -> bytes:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = await request.body()
    if body and ctype != JSON:
        raise BadRequest("the agent page takes JSON")
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest("request too long")
    return body


@route("/agents/{name:str}/api/{rest:path}", http_method=["GET", "POST"], media_type=JSON)
async def api(request: Request[Any, Any, Any], name: FromPath[str], rest: FromPath[str]) -> Any:
    """One JSON call of the agent page's API, checked both ways."""
    return await _proxy(request, name, rest)


@get("/agents/{name:str}/api/events", media_type=SSE)
async def events(request: Request[Any, Any, Any], name: FromPath[str]) -> Any:
    """The agent's live tail (SSE), relayed as it comes."""
    return await _proxy(request, name, "events")


async def _proxy(request: Request[Any, Any, Any], name: str, rest: str) -> Any:
    agent = _agent(name)
    path = rest.strip("/")
    expected = API.get((request.method, path))
    if expected is None or ".." in rest:
        raise NotFound(f"no agent page API {request.method} {path!r}")
    link = deps(request).link
    headers = _upstream_headers(request, expected)
    body = await _request_body(request) if request.method == "POST" else b""
    if body:
        headers["content-type"] = JSON
    query = {"after": request.query_params["after"]} if "after" in request.query_params else {}
    client = await link.client(agent, stream=expected == SSE)
    try:
        upstream = await client.send(
            client.build_request(
                request.method, f"/api/{path}", headers=headers, content=body, params=query
            ),
            stream=True,
        )
    except httpx.HTTPError as exc:
        await client.aclose()
        return _refuse(502, f"agent page of {agent} does not answer ({type(exc).__name__})")
    except Unavailable as exc:  # the node's relay: no answer, or none from the page
        await client.aclose()
        return _refuse(502, f"agent page of {agent}: {exc}")
    except HiveError:
        await client.aclose()
        raise
    if _media(upstream) != expected:
        got = _media(upstream) or "no content type"
        await upstream.aclose()
        await client.aclose()
        log.warning("agent page of %s answered %s for %s", agent, got, path)
        return _refuse(502, f"agent page of {agent} answered {got}, not {expected}")
    if expected == SSE:
        return Stream(
            _relay(upstream, client),
            status_code=upstream.status_code,
            media_type=SSE,
            headers=SSE_HEADERS,
        )
    try:
        content = await _read_json(upstream)
    except (Unavailable, httpx.HTTPError) as exc:
        return _refuse(502, f"agent page of {agent}: {exc}")
    finally:
        await upstream.aclose()
        await client.aclose()
    return Response(
        content, status_code=upstream.status_code, media_type=JSON, headers=PROXIED_HEADERS
    )


async def _relay(upstream: httpx.Response, client: httpx.AsyncClient) -> AsyncIterator[bytes]:
    """The harness's SSE bytes, as they come, until either side ends."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        log.info("agent page stream ended: %s", exc)
        yield _gone(f"live tail lost: {exc}" if str(exc) else "live tail lost")
    finally:
        await upstream.aclose()
        await client.aclose()


def _gone(text: str) -> bytes:
    """The dashboard's own last SSE event of a broken tail (after a blank
    line: it never merges with a half-relayed event)."""
    return b"\n\nevent: gone\ndata: " + json.dumps({"text": text[:MAX_TEXT]}).encode() + b"\n\n"


# --- the terminal ---------------------------------------------------------------------


def _size(value: str | None, default: int) -> int:
    try:
        return min(max(int(value or default), 1), 1000)
    except ValueError:
        return default


@websocket("/agents/{name:str}/api/terminal")
async def terminal(socket: WebSocket[Any, Any, Any], name: FromPath[str]) -> None:
    """The browser's terminal WebSocket joined to one on the harness (a new shell)."""
    try:
        agent = _agent(name)
        upstream = await deps(socket).link.terminal(  # type: ignore[arg-type]
            agent,
            _size(socket.query_params.get("cols"), TERMINAL_SIZE[0]),
            _size(socket.query_params.get("rows"), TERMINAL_SIZE[1]),
        )
    except HiveError as exc:
        await socket.accept()
        await socket.send_json({"type": "error", "text": str(exc)})
        await socket.close(code=1011, reason="agent page unavailable")
        return
    await socket.accept()
    log.info("terminal of %s opened", agent)
    down = asyncio.ensure_future(_to_browser(upstream, socket))
    up = asyncio.ensure_future(_to_harness(socket, upstream))
    try:
        await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (down, up):
            t.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
        await upstream.close()  # the harness ends the shell
        with contextlib.suppress(Exception):
            await socket.close(code=1000, reason="shell ended")
        log.info("terminal of %s closed", agent)


async def _to_browser(upstream: Terminal, socket: WebSocket[Any, Any, Any]) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for frame in upstream:
            if isinstance(frame, bytes):
                await socket.send_bytes(frame)
            else:
                await socket.send_text(frame)


async def _to_harness(socket: WebSocket[Any, Any, Any], upstream: Terminal) -> None:
    """The browser's text frames (input, resize) on to the harness."""
    with contextlib.suppress(WebSocketDisconnect, ConnectionClosed, HiveError):
        while True:
            text = await socket.receive_text()
            await upstream.send(text)


HANDLERS = [agent_page, credentials_form, credentials_save, api, events, terminal]
