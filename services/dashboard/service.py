"""Service wiring: the dashboard's Litestar app served by uvicorn in the runtime
(``hyperhive.common.webserve``: the socket is bound first, the runner owns
SIGTERM)."""

from __future__ import annotations

import logging

from hyperhive.common.config import Settings
from hyperhive.common.service import Runtime
from hyperhive.common.webserve import WebServer, bind
from hyperhive.dashboard.app import create_app
from hyperhive.dashboard.security import operator_security, policy
from hyperhive.dashboard.web import Deps

log = logging.getLogger(__name__)


def check(settings: Settings) -> None:
    """Before connecting: the operator token is there (or explicitly waived).

    Raises:
        ConfigError: no token and no opt-out, or an unreadable token file.
    """
    operator_security(settings.dashboard, policy(settings.dashboard).session_label, warn=False)


async def start(rt: Runtime) -> None:
    """Starts the web server; it stops (SSE streams first) when the service stops."""
    ds = rt.settings.dashboard
    app = create_app(rt.settings, rt.nc, rt.js)
    deps: Deps = app.state.deps
    sock = bind(ds.host, ds.port, "dashboard", backlog=2048)
    rt.stack.callback(sock.close)
    await deps.hub.start()
    rt.stack.push_async_callback(deps.hub.stop)
    server = WebServer(app, sock, name="dashboard-http", backlog=2048)

    async def stop() -> None:
        await deps.hub.stop()  # ends SSE streams so uvicorn need not wait on them
        await server.stop()

    rt.stack.push_async_callback(stop)
    await server.start(rt.spawn)
    log.info("dashboard listening", extra={"url": f"http://{ds.host}:{ds.port}/"})
