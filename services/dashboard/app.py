"""The dashboard's Litestar app: ``create_app(settings, nc, js)``.

A NATS client only: pages and actions go through ``hive.admin.*`` (see
:mod:`hyperhive.dashboard.hive`), live views follow ``HIVE_EVENTS`` through
one in-process :class:`~hyperhive.dashboard.hub.EventHub`. Agent pages are
served here too (``/agents/<name>/``), their API proxied to each harness's
unix socket, or over NATS to the relay of the node it runs on
(:mod:`hyperhive.dashboard.routes_agent_page`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.static_files import create_static_files_router
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from hyperhive.common.config import Settings
from hyperhive.common.errors import HiveError
from hyperhive.dashboard import (
    routes_activity,
    routes_agent_page,
    routes_app,
    routes_approvals,
    routes_containers,
    routes_flow,
    routes_pages,
    routes_questions,
    routes_telemetry,
)
from hyperhive.dashboard.harnesslink import HarnessLink
from hyperhive.dashboard.hive import Hive
from hyperhive.dashboard.hub import EventHub
from hyperhive.dashboard.render import Renderer
from hyperhive.dashboard.security import Guard, operator_security, policy
from hyperhive.dashboard.web import HTTP_STATUS, Deps

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings, nc: NATS, js: JetStreamContext) -> Litestar:
    """The dashboard app over an open NATS connection.

    The caller starts and stops the event hub (``app.state.deps.hub``):
    a failure to subscribe must surface before the server listens.

    Raises:
        ConfigError: no operator token (and no opt-out), or its file cannot be read.
    """
    ds = settings.dashboard
    render = Renderer()
    guard_policy = policy(ds)
    security = operator_security(ds, guard_policy.session_label)
    if not security.token_required:  # the explicit opt-out: act only from loopback
        guard_policy = dataclasses.replace(guard_policy, loopback_actions_only=True)
    hub = EventHub(
        js,
        backfill_events=ds.flow_backfill_events,
        ring=ds.flow_ring,
        coalesce_s=ds.flow_coalesce_ms / 1000.0,
        ping_s=ds.sse_ping_s,
    )
    hive = Hive(nc, ds)
    hive.activity_feed = hub.activity_entries
    state = Deps(
        settings=ds,
        hive=hive,
        hub=hub,
        render=render,
        security=security,
        link=HarnessLink(settings, nc),
    )

    def login_page(csrf: str, error: str) -> bytes:
        return render("login.html", csrf=csrf, error=error).encode()

    return Litestar(
        route_handlers=[
            *routes_pages.HANDLERS,
            *routes_app.HANDLERS,
            *routes_activity.HANDLERS,
            *routes_agent_page.HANDLERS,
            *routes_containers.HANDLERS,
            *routes_approvals.HANDLERS,
            *routes_questions.HANDLERS,
            *routes_flow.HANDLERS,
            *routes_telemetry.HANDLERS,
            create_static_files_router(path="/static", directories=[STATIC], name="static"),
        ],
        middleware=[
            DefineMiddleware(Guard, security=security, policy=guard_policy, login_page=login_page)
        ],
        exception_handlers={Exception: _error},
        state=State({"deps": state}),
        debug=False,
        logging_config=None,  # the service runner set up logging already
    )


def _error(_request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    """Errors outside an action as plain text; an unexpected one is logged."""
    if isinstance(exc, HTTPException):
        return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")
    if isinstance(exc, HiveError):
        status = HTTP_STATUS.get(exc.code, 500)
        return Response(str(exc), status_code=status, media_type="text/plain")
    log.exception("request failed", exc_info=exc)
    return Response("500: internal error (see the dashboard log)", status_code=500)
