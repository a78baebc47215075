"""Service wiring: the dashboard's Litestar app served by uvicorn in the runtime.

The runner gives us the NATS connection; we bind the listening socket
ourselves (so a taken port is one clear error, not uvicorn's ``sys.exit``)
and run uvicorn without its signal handlers (the runner owns SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from hyperhive.common.errors import ConfigError
from hyperhive.common.service import Runtime
from hyperhive.dashboard.app import create_app
from hyperhive.dashboard.web import Deps

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 20.0
SHUTDOWN_GRACE_S = 3.0


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service runner stops us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The listening socket.

    Raises:
        ConfigError: the address cannot be bound (in use, bad host).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise ConfigError(f"dashboard cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def start(rt: Runtime) -> None:
    """Starts the web server; it stops (SSE streams first) when the service stops."""
    ds = rt.settings.dashboard
    app = create_app(rt.settings, rt.nc, rt.js)
    deps: Deps = app.state.deps
    sock = bind(ds.host, ds.port)
    rt.stack.callback(sock.close)
    await deps.hub.start()
    rt.stack.push_async_callback(deps.hub.stop)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,  # our logging setup stays in charge
        access_log=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
        backlog=2048,
    )
    server = _Server(config)
    task = rt.spawn(server.serve(sockets=[sock]), "dashboard-http")

    async def stop() -> None:
        await deps.hub.stop()  # ends SSE streams so uvicorn need not wait on them
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE_S + 5)
        except (TimeoutError, asyncio.CancelledError):
            server.force_exit = True

    rt.stack.push_async_callback(stop)
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        while not server.started:
            if task.done():
                task.result()  # raises why it stopped
                raise ConfigError("dashboard web server stopped while starting")
            await asyncio.sleep(0.02)
    log.info("dashboard listening", extra={"url": f"http://{ds.host}:{ds.port}/"})
