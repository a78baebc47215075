"""``hive harness serve``: the turn loop, the heartbeat and the agent page in one process.

Start: settings → NATS with the agent's own credentials → the page's unix
socket (``harness.socket``, or the listening socket lifecycle passed in as
``harness.socket_fd``) → turn loop + heartbeat + web server. No TCP port.
SIGTERM/SIGINT: stop taking messages, end a running claude (its message is
not acked, so the broker hands it out again, marked redelivered), end SSE
streams, stop the web server, drain NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from nats.aio.client import Client as NATS

from hyperhive.common.config import Settings
from hyperhive.common.errors import ConfigError
from hyperhive.common.natsconn import connect
from hyperhive.common.service import GRACE_S, drain, stop_on_signals
from hyperhive.common.webserve import WebServer, bind_unix, inherited
from hyperhive.harness.config import HarnessConfig, resolve
from hyperhive.harness.loop import Harness
from hyperhive.harness.web import Deps, create_app

log = logging.getLogger(__name__)


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[Harness, str], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Runs the harness until ``stop`` is set (or SIGTERM/SIGINT in the main thread).

    ``ready(harness, socket_path)`` is called once the page listens and the loop runs.
    ``handle_signals=False`` leaves SIGTERM/SIGINT alone (in-process tests).

    Raises:
        ConfigError: bad settings or agent.toml, or no page socket.
        Unavailable: NATS cannot be reached.
    """
    stop = stop_on_signals(stop, handle=handle_signals)
    cfg: HarnessConfig = resolve(settings)
    sock = page_socket(settings)
    path = settings.harness.socket
    nc: NATS = await connect(settings.nats, name=f"hive-harness-{cfg.agent}")
    harness = Harness(cfg, nc)
    app = create_app(harness)
    deps: Deps = app.state.deps
    server = WebServer(app, sock, name="harness-http")
    tasks: list[asyncio.Task[None]] = []
    try:
        await server.start()
        assert server.task is not None
        tasks = [
            server.task,
            asyncio.create_task(harness.run(stop), name="harness-loop"),
            asyncio.create_task(harness.heartbeat(stop), name="harness-heartbeat"),
        ]
        log.info("harness serving", extra={"agent": cfg.agent, "socket": path})
        if ready:
            ready(harness, path)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for t in done:
            if t is not stopper and not t.cancelled() and t.exception() is not None:
                log.error("harness task %s died", t.get_name(), exc_info=t.exception())
        stop.set()
    finally:
        stop.set()
        deps.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks[1:], return_exceptions=True), GRACE_S)
        await server.stop()
        for t in tasks:
            t.cancel()
        await drain(nc)


def page_socket(settings: Settings) -> socket.socket:
    """The page's listening unix socket: inherited, else bound at ``harness.socket``.

    Raises:
        ConfigError: neither is set, or it cannot be used.
    """
    hs = settings.harness
    if hs.socket_fd >= 0:
        return inherited(hs.socket_fd, "agent page")
    if not hs.socket:
        raise ConfigError("harness.socket is not set (the agent page's unix socket)")
    # who may connect is decided by who sees the run dir (this agent and the
    # host); the dashboard may run as another user than the harness
    return bind_unix(hs.socket, "agent page", mode=0o666)
