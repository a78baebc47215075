"""What the route modules share: dependencies, HTML responses, actions.

An action (a form post) answers a ``fetch`` with JSON ``{ok, message,
refresh}`` (the page then re-reads the named sections in place) and a plain
browser form post with a small HTML page: the page works without JS too.
A ``HiveError`` from a service becomes the matching HTTP status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType

from hyperhive.common import actor
from hyperhive.common.config import DashboardSettings
from hyperhive.common.errors import HiveError
from hyperhive.dashboard import security
from hyperhive.dashboard.harnesslink import HarnessLink
from hyperhive.dashboard.hive import Hive
from hyperhive.dashboard.hub import EventHub
from hyperhive.dashboard.render import Renderer
from hyperhive.dashboard.security import SCOPE_KEY, Security

log = logging.getLogger(__name__)

HTTP_STATUS: dict[str, int] = {
    "bad_request": 400,
    "not_found": 404,
    "conflict": 409,
    "forbidden": 403,
    "unavailable": 503,
    "timeout": 504,
    "backend_failed": 502,
}


@dataclass
class Deps:
    """What every handler needs; kept on ``app.state.deps``."""

    settings: DashboardSettings
    hive: Hive
    hub: EventHub
    render: Renderer
    security: Security
    link: HarnessLink  # the agent pages' APIs (routes_agent_page)


def deps(request: Request[Any, Any, Any]) -> Deps:
    return request.app.state.deps  # type: ignore[no-any-return]


def csrf_token(request: Request[Any, Any, Any]) -> str:
    """The token the page embeds (set by the Guard middleware)."""
    return str(request.scope.get(SCOPE_KEY, ""))  # type: ignore[call-overload]


def decided_by(request: Request[Any, Any, Any]) -> str:
    """Who an operator action through this request is recorded as."""
    d = deps(request)
    client = request.client.host if request.client else ""
    return security.decided_by(d.settings, d.security, client)


def page_context(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """What every template gets besides its data."""
    d = deps(request)
    return {
        "csrf": csrf_token(request),
        "host": request.url.hostname or "127.0.0.1",
        "token_required": d.security.token_required,
        "logs_poll_ms": int(d.settings.logs_poll_s * 1000),
    }


def html(content: str, status: int = 200) -> Response[str]:
    return Response(content, media_type=MediaType.HTML, status_code=status)


def wants_json(request: Request[Any, Any, Any]) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def act(
    request: Request[Any, Any, Any],
    work: Awaitable[str],
    *,
    section: str,
    refresh: tuple[str, ...],
) -> Response[Any]:
    """Runs an operator action (recorded as done by :func:`decided_by`) and
    reports how it went."""
    try:
        with actor.acting_as(decided_by(request)):
            message = await work
        ok, status = True, 200
    except HiveError as exc:
        message, ok, status = str(exc), False, HTTP_STATUS.get(exc.code, 500)
        log.info("action failed: %s", exc, extra={"path": request.url.path})
    if wants_json(request):
        return Response(
            {"ok": ok, "message": message, "refresh": list(refresh)},
            status_code=status,
            media_type=MediaType.JSON,
        )
    page = deps(request).render(
        "result.html", ok=ok, message=message, section=section, **page_context(request)
    )
    return html(page, status)


async def form_fields(request: Request[Any, Any, Any]) -> dict[str, list[str]]:
    """The posted form as name -> values (a checkbox group has several)."""
    form = await request.form()
    out: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            out.setdefault(key, []).append(value)
    return out


def field(fields: dict[str, list[str]], name: str, default: str = "") -> str:
    values = fields.get(name)
    return values[0].strip() if values else default
