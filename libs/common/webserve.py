"""A Litestar app served by uvicorn inside the caller's event loop.

The listening socket is bound first (so a taken port is one clear
``ConfigError``, not uvicorn's ``sys.exit``), and uvicorn runs without its
own signal handlers: the process that embeds it owns SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from litestar import Litestar

from hyperhive.common.errors import ConfigError

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 20.0
SHUTDOWN_GRACE_S = 3.0

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, what: str, *, backlog: int = 256) -> socket.socket:
    """The listening socket (port 0: any free port).

    Raises:
        ConfigError: the address cannot be bound (in use, bad host); names ``what``.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise ConfigError(f"{what} cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def bind_unix(path: str | Path, what: str, *, mode: int = 0o600) -> socket.socket:
    """A listening unix socket at ``path`` (a stale socket there is replaced).

    Raises:
        ConfigError: the path is not a socket, or cannot be bound; names ``what``.
    """
    path = Path(path)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"{what} cannot listen on {path}: {exc.strerror}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{what} cannot listen on {path}: {exc.strerror or exc}") from None
    sock.listen(256)
    sock.setblocking(False)
    return sock


def inherited(fd: int, what: str) -> socket.socket:
    """The listening socket passed in as ``fd`` (socket activation).

    Raises:
        ConfigError: ``fd`` is not an open listening socket.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"{what}: fd {fd} is not a socket: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class WebServer:
    """``app`` served on ``sock`` until :meth:`stop`."""

    def __init__(
        self, app: Litestar, sock: socket.socket, *, name: str, backlog: int = 256
    ) -> None:
        self.sock = sock
        self.name = name
        self._server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,  # the process's logging stays in charge
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
                backlog=backlog,
            )
        )
        self.task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The TCP port (0 for a unix socket)."""
        if self.sock.family == socket.AF_UNIX:
            return 0
        return int(self.sock.getsockname()[1])

    async def start(self, spawn: Spawn | None = None) -> None:
        """Starts serving (in a task made by ``spawn``, if given) and waits
        until it listens.

        Raises:
            ConfigError: the server stopped while starting.
            TimeoutError: it did not start within ``STARTUP_TIMEOUT_S``.
        """
        coro = self._server.serve(sockets=[self.sock])
        self.task = spawn(coro, self.name) if spawn else asyncio.create_task(coro, name=self.name)
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while not self._server.started:
                if self.task.done():
                    self.task.result()  # raises why it stopped
                    raise ConfigError(f"{self.name} stopped while starting")
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Lets open requests finish for a short grace, then closes the socket.

        End long-lived streams (SSE) first: uvicorn waits for them.
        """
        self._server.should_exit = True
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), SHUTDOWN_GRACE_S + 2)
            except (TimeoutError, asyncio.CancelledError):
                self._server.force_exit = True
            except Exception:
                log.exception("%s did not stop cleanly", self.name)
        self.sock.close()
