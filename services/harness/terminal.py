"""The agent page's terminal: a login shell on a PTY, attached over a WebSocket.

``/api/terminal`` (WebSocket on the page socket; the operator reaches it
only through the dashboard, whose guard checks the operator login, the
Origin and the page's CSRF token first, see web.py) opens ``$SHELL -l``
(else bash) on a new PTY, in the agent's working dir, as the harness's user,
with claude's environment (so ``claude`` there uses the agent's config dir).

Protocol: the server sends the shell's output as binary frames and one text
frame ``{"type": "started", "pid", "shell", "cwd"}`` first; the client sends
text frames ``{"type": "input", "data"}`` and ``{"type": "resize", "cols",
"rows"}``. The WebSocket closing (the page closed or the panel shut) ends the
shell: SIGHUP to its process group, then SIGKILL to whatever is left of its
session (background jobs included). The shell exiting closes the WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import struct
import termios
from pathlib import Path
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from hyperhive.harness.claude import claude_env
from hyperhive.harness.config import HarnessConfig

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
HANGUP_GRACE_S = 1.0
MAX_INPUT_CHARS = 64 * 1024
DEFAULT_SIZE = (80, 24)


def _take_controlling_tty() -> None:  # pragma: no cover - runs in the child
    """In the child, after setsid: the PTY on stdin becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _clamp(value: Any, default: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return default
    return min(max(n, 1), 1000)


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state ppid pgrp session ...
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


class Shell:
    """One login shell on a PTY. :meth:`open`, then read/write/resize, :meth:`close` once."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int, argv: list[str]) -> None:
        self.proc = proc
        self.master = master
        self.argv = argv
        self._closed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def open(cls, cfg: HarnessConfig, cols: int, rows: int) -> Shell:
        """Starts the shell. Raises OSError when it cannot run."""
        shell = os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"
        argv = [shell, "-l"]
        env = claude_env(cfg)
        env.update({"TERM": "xterm-256color", "COLORTERM": "truecolor", "SHELL": shell})
        env.setdefault("HOME", str(Path.home()))
        master, slave = os.openpty()
        try:
            _set_size(master, cols, rows)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cfg.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=_take_controlling_tty,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(proc, master, argv)

    async def _ready(self, writer: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        add, remove = (
            (loop.add_writer, loop.remove_writer)
            if writer
            else (loop.add_reader, loop.remove_reader)
        )
        add(self.master, wake)
        try:
            await fut
        finally:
            remove(self.master)

    async def read(self) -> bytes:
        """The next output; b"" once the shell (and everything on its PTY) is gone."""
        while True:
            try:
                return os.read(self.master, READ_CHUNK)
            except BlockingIOError:
                await self._ready(writer=False)
            except OSError:  # EIO: no process holds the PTY any more
                return b""

    async def write(self, data: bytes) -> None:
        while data:
            try:
                n = os.write(self.master, data)
                data = data[n:]
            except BlockingIOError:
                await self._ready(writer=True)

    def resize(self, cols: int, rows: int) -> None:
        """New window size (the kernel sends SIGWINCH to the foreground job)."""
        _set_size(self.master, cols, rows)

    async def close(self) -> None:
        """Ends the shell and everything it started in its session."""
        if self._closed:
            return
        self._closed = True
        pid = self.proc.pid
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGHUP)  # bash passes it on to its jobs
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), HANGUP_GRACE_S)
        for member in [pid, *session_members(pid)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5)
        os.close(self.master)


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _pump_out(shell: Shell, socket: WebSocket[Any, Any, Any]) -> None:
    while chunk := await shell.read():
        await socket.send_bytes(chunk)


async def _pump_in(shell: Shell, socket: WebSocket[Any, Any, Any]) -> None:
    while True:
        raw = await socket.receive_data(mode="text")
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if msg.get("type") == "input" and isinstance(msg.get("data"), str):
            await shell.write(msg["data"][:MAX_INPUT_CHARS].encode())
        elif msg.get("type") == "resize":
            shell.resize(_clamp(msg.get("cols"), DEFAULT_SIZE[0]), _clamp(msg.get("rows"), 24))


@websocket("/api/terminal")
async def terminal_ws(socket: WebSocket[Any, Any, Any]) -> None:
    """One terminal session: lives exactly as long as this WebSocket."""
    deps = socket.app.state.deps
    cfg: HarnessConfig = deps.harness.cfg
    if not cfg.settings.harness.terminal:
        await socket.close(code=1008, reason="the terminal is disabled (harness.terminal)")
        return
    await socket.accept()
    cols = _clamp(socket.query_params.get("cols"), DEFAULT_SIZE[0])
    rows = _clamp(socket.query_params.get("rows"), DEFAULT_SIZE[1])
    try:
        shell = await Shell.open(cfg, cols, rows)
    except OSError as exc:
        await socket.send_json({"type": "error", "text": f"cannot start a shell: {exc}"})
        await socket.close(code=1011)
        return
    log.info("terminal opened", extra={"pid": shell.pid, "shell": shell.argv[0]})
    deps.terminals.add(shell)
    tasks: set[asyncio.Future[Any]] = {
        asyncio.ensure_future(_pump_out(shell, socket)),
        asyncio.ensure_future(_pump_in(shell, socket)),
        asyncio.ensure_future(deps.closing.wait()),
    }
    try:
        await socket.send_json(
            {"type": "started", "pid": shell.pid, "shell": shell.argv[0], "cwd": str(cfg.workdir)}
        )
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await shell.close()
        deps.terminals.discard(shell)
        log.info("terminal closed", extra={"pid": shell.pid})
        with contextlib.suppress(Exception):
            await socket.close(code=1000, reason="shell ended")
