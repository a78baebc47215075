"""The page, its sections as fragments, the live-change stream, login."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect, Stream

from hyperhive.common import sse
from hyperhive.dashboard import sections
from hyperhive.dashboard.security import SESSION_COOKIE, login_cookie
from hyperhive.dashboard.web import deps, field, form_fields, html, page_context


@get("/")
async def index(request: Request[Any, Any, Any]) -> Response[str]:
    d = deps(request)
    # taken before the sections are read: a change that lands while they are
    # read, or before the page's /events stream opens, is replayed to it
    seen = d.hub.changes.ring.last_key()
    views, services = await asyncio.gather(sections.load_all(d.hive), d.hive.services())
    return html(
        d.render("index.html", views=views, services=services, seen=seen, **page_context(request))
    )


@get("/section/{name:str}")
async def section(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[str]:
    """One section's body, for refreshing it in place."""
    d = deps(request)
    if name == "status":
        services = await d.hive.services()
        return html(d.render("status.html", services=services, **page_context(request)))
    if name not in sections.SECTIONS:
        raise NotFoundException(f"no section {name!r}")
    view = await sections.load(name, d.hive)
    return html(d.render("section_body.html", view=view, **page_context(request)))


@get("/events")
async def events(request: Request[Any, Any, Any]) -> Stream:
    """Live HIVE_EVENTS changes (agents, approvals, questions) for refreshing sections."""
    hub = deps(request).hub
    ring = hub.changes.ring
    after = request.query_params.get("after", "")
    # ``after``: the last change the page's sections already show (its render)
    cursor = ring.after_key(int(after)) if after.isdigit() and len(after) < 20 else ring.end
    return sse.response(hub.stream(hub.changes, cursor))


@get("/login")
async def login_form(request: Request[Any, Any, Any]) -> Response[Any]:
    """The login form; ``?token=…`` (the URL ``hive up`` prints) logs in at once
    and redirects to ``/``, so the token leaves the address bar."""
    token = request.query_params.get("token")
    if token is None:
        d = deps(request)
        return html(d.render("login.html", csrf=page_context(request)["csrf"], error=""))
    return _log_in(request, token)


@post("/login")
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    return _log_in(request, field(await form_fields(request), "token"))


def _log_in(request: Request[Any, Any, Any], token: str) -> Response[Any]:
    """The session cookie and a redirect to ``/`` for the right token; the form again if not."""
    d = deps(request)
    if not d.security.token_required:
        return Redirect("/", status_code=303)
    token = token.strip()
    if not token or not d.security.token_ok(token):
        page = d.render("login.html", csrf=page_context(request)["csrf"], error="wrong token")
        return html(page, 403)
    name, value = login_cookie(d.security)
    response: Response[Any] = Redirect("/", status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(name, value, path="/", httponly=True, samesite="strict")
    return response


@post("/logout")
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    response: Response[Any] = Redirect("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


HANDLERS = [index, section, events, login_form, login, logout]
