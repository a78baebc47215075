"""An agent page's API on its unix socket, reached from the same host.

Each harness serves its page's API on a unix socket in its agent's own run
dir (``agents/<n>/run/page.sock``, :attr:`AgentPaths.page_socket`), never on
a TCP port. Under the process backend that dir is visible to the agent's own
sandbox and the host only; under the nixos backend it is bind-mounted from
the host, so a host process finds the socket at the same path either way.
Two host processes open it: the dashboard (for agents on its own node) and
a node's page relay (for the dashboard on the hub).

The name is checked with the agent-name rules before it becomes a path. The
socket is opened ``O_PATH | O_NOFOLLOW`` and checked to be a socket, then
connected through ``/proc/self/fd/<n>``: a run dir the agent can write (the
nixos backend's) cannot swap in a symlink to another agent's socket between
the check and the connect.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import ClientConnection, unix_connect

from hyperhive.common.config import Settings
from hyperhive.common.errors import HiveError, NotFound, Unavailable
from hyperhive.common.names import check_agent_name
from hyperhive.common.paths import AgentPaths

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MAX_WS_FRAME",
    "READ_TIMEOUT_S",
    "PageSocket",
]

# what the hop's requests say as Host: the harness answers nothing else anyway
BASE_URL = "http://agent-page"
TERMINAL_URI = "ws://agent-page/api/terminal"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_WS_FRAME = 1024 * 1024


class PageSocket:
    """Opens connections to the page APIs of the agents on this host."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _open(self, name: str) -> int:
        """An ``O_PATH`` fd of agent ``name``'s page socket (close it after use).

        Raises:
            BadRequest: not a valid agent name (checked before any path is made).
            NotFound: no page socket there (no such agent, or never started).
            Unavailable: something that is not a socket is at that path.
        """
        agent = check_agent_name(name, allow_manager=True)
        path = AgentPaths.of(self._settings, agent).page_socket
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"agent {agent} has no page (not running here?)") from None
        except OSError as exc:
            raise Unavailable(f"agent page of {agent}: {exc.strerror}") from None
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):  # a symlink included: never followed
            os.close(fd)
            raise Unavailable(f"agent page of {agent}: {path.name} is not a socket")
        return fd

    @contextlib.contextmanager
    def socket(self, name: str) -> Iterator[str]:
        """A path that connects to agent ``name``'s page socket while the block runs."""
        fd = self._open(name)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)

    def client(self, name: str, *, stream: bool = False) -> httpx.AsyncClient:
        """An HTTP client of agent ``name``'s page API (close it after use).

        ``stream``: no read timeout (the SSE tail pings every 15 s).
        """
        transport = _Transport(self._open(name))
        read = None if stream else READ_TIMEOUT_S
        return httpx.AsyncClient(
            transport=transport,
            base_url=BASE_URL,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S, read=read),
            follow_redirects=False,
            trust_env=False,
        )

    async def terminal(self, name: str, cols: int, rows: int) -> ClientConnection:
        """A WebSocket to agent ``name``'s terminal (a new shell on its side).

        Raises:
            Unavailable: the page does not answer.
        """
        uri = f"{TERMINAL_URI}?{urlencode({'cols': cols, 'rows': rows})}"
        try:
            with self.socket(name) as path:
                return await unix_connect(
                    path,
                    uri,
                    open_timeout=CONNECT_TIMEOUT_S,
                    max_size=MAX_WS_FRAME,
                    compression=None,
                )
        except HiveError:
            raise
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"agent page of {name} does not answer: {exc}") from None
        except Exception as exc:  # websockets' handshake errors (a refused upgrade)
            raise Unavailable(f"agent page of {name} refused the terminal: {exc}") from None


class _Transport(httpx.AsyncHTTPTransport):
    """HTTP over the socket held open as ``fd``; the fd closes with the client."""

    def __init__(self, fd: int) -> None:
        super().__init__(uds=f"/proc/self/fd/{fd}", retries=0)
        self._fd = fd

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
