"""An agent page's API on another node, reached over NATS through its relay.

The same two things :class:`~hyperhive.common.pagesocket.PageSocket` gives
for an agent on this host, for an agent on node ``node``: an httpx transport
(:class:`NatsPageTransport`, so the proxy in routes_agent_page reads the
answer exactly as it reads one from a socket, and checks it the same way)
and a terminal (:class:`RemoteTerminal`). The protocol is in
:mod:`hyperhive.common.wire.page`; the node's side in
:mod:`hyperhive.lifecycle.pagerelay`.

Only the request's JSON body, ``Last-Event-ID`` and ``after`` travel: the
wire types have no field for anything else (no cookie, no token).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import TypeVar

import httpx
import msgspec
from nats.aio.client import Client as NATS

from hyperhive.common import rpc, subjects
from hyperhive.common.errors import BadRequest, HiveError, Internal, NotFound, Unavailable
from hyperhive.common.pagesocket import CONNECT_TIMEOUT_S, READ_TIMEOUT_S
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.page import (
    MAX_PUSH_CHARS,
    PULL_GRACE_S,
    PULL_WAIT_S,
    EventsOpen,
    PageAnswer,
    PageCall,
    PageFrame,
    PullReply,
    PullRequest,
    PushRequest,
    SessionOpened,
    SessionRequest,
    TerminalOpen,
)

__all__ = ["NatsPageTransport", "RemoteTerminal", "open_terminal"]

log = logging.getLogger(__name__)
T = TypeVar("T", bound=msgspec.Struct)

# (method, path) of the page API → the relay's op
OPS: dict[tuple[str, str], str] = {
    ("GET", "/api/status"): subjects.PAGE_STATUS,
    ("POST", "/api/prompt"): subjects.PAGE_PROMPT,
    ("POST", "/api/cancel"): subjects.PAGE_CANCEL,
    ("POST", "/api/credentials"): subjects.PAGE_CREDENTIALS,
    ("GET", "/api/events"): subjects.PAGE_EVENTS,
}
CLOSE_TIMEOUT_S = 2.0
# the relay gives up on a page after READ_TIMEOUT_S: its answer saying so comes first
CALL_TIMEOUT_S = READ_TIMEOUT_S + PULL_GRACE_S
# opening a shell is the relay's connect to the page socket (CONNECT_TIMEOUT_S):
# a relay silent for longer is gone, and the terminal says so
OPEN_TIMEOUT_S = CONNECT_TIMEOUT_S + PULL_GRACE_S


class _Relay:
    """Requests to one agent's page relay on one node."""

    def __init__(self, nc: NATS, node: str, agent: str) -> None:
        self.nc, self.node, self.agent = nc, node, agent

    async def request(
        self, op: str, payload: msgspec.Struct, reply: type[T], timeout: float = CALL_TIMEOUT_S
    ) -> T:
        """One call; a relay that does not answer is ``Unavailable``, saying which.

        Raises:
            Unavailable: no relay answers (the node is gone), or it is too slow.
            HiveError: the relay's own error (no such page there, ...).
        """
        subject = subjects.node_page(self.node, self.agent, op)
        try:
            return await rpc.request(self.nc, subject, payload, reply, timeout=timeout)
        except (Unavailable, TimeoutError) as exc:
            raise Unavailable(
                f"the page relay of node {self.node} does not answer ({exc})"
            ) from None


class _Session:
    """One open tail or terminal on a relay: frames pulled in order."""

    def __init__(self, relay: _Relay, session: str) -> None:
        self.relay = relay
        self.id = session
        self.reason = ""
        self.closed = False

    async def frames(self) -> AsyncIterator[PageFrame]:
        """The session's frames until it ends.

        Raises:
            Unavailable: the relay stopped answering (the node is gone).
        """
        have = 0
        while not self.closed:
            reply = await self.relay.request(
                subjects.PAGE_PULL,
                PullRequest(session=self.id, have=have),
                PullReply,
                timeout=PULL_WAIT_S + PULL_GRACE_S,
            )
            skip = have - reply.first
            if not 0 <= skip <= len(reply.frames):
                raise Internal(f"page session {self.id}: frames from {reply.first}, had {have}")
            for frame in reply.frames[skip:]:
                have += 1
                yield frame
            if reply.end:
                self.reason = reply.reason
                return

    async def close(self) -> None:
        """Tells the relay (best effort: an unreachable relay ends it by itself)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(HiveError):
            await self.relay.request(
                subjects.PAGE_CLOSE, SessionRequest(session=self.id), Ok, timeout=CLOSE_TIMEOUT_S
            )


class _SessionBytes(httpx.AsyncByteStream):
    """The SSE bytes of a tail session, as an httpx response body.

    A relay that stops answering ends the body with ``httpx.ReadError``
    (carrying why), as a broken socket would.
    """

    def __init__(self, session: _Session) -> None:
        self._session = session

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for frame in self._session.frames():
                if frame.data:
                    yield frame.data
        except HiveError as exc:
            raise httpx.ReadError(str(exc)) from None
        if self._session.reason:  # the relay ended it, not the harness
            raise httpx.ReadError(self._session.reason)

    async def aclose(self) -> None:
        await self._session.close()


class _Body(httpx.AsyncByteStream):
    """A body already here, read as a socket's would be (once, by ``aiter_raw``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._data:
            yield self._data


class NatsPageTransport(httpx.AsyncBaseTransport):
    """The page API of agent ``agent`` on node ``node``, as an httpx transport."""

    def __init__(self, nc: NATS, node: str, agent: str) -> None:
        self._relay = _Relay(nc, node, agent)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        op = OPS.get((request.method, request.url.path))
        if op is None:
            raise NotFound(f"no agent page API {request.method} {request.url.path}")
        if op == subjects.PAGE_EVENTS:
            return await self._events(request)
        try:
            body = (await request.aread()).decode()
        except UnicodeDecodeError:
            raise BadRequest("the agent page takes UTF-8 JSON") from None
        answer = await self._relay.request(op, PageCall(body=body), PageAnswer)
        return httpx.Response(
            answer.status,
            headers={"content-type": answer.content_type} if answer.content_type else {},
            stream=_Body(answer.body.encode()),
        )

    async def _events(self, request: httpx.Request) -> httpx.Response:
        opened = await self._relay.request(
            subjects.PAGE_EVENTS,
            EventsOpen(
                last_event_id=request.headers.get("last-event-id", "")[:64],
                after=request.url.params.get("after", "")[:64],
            ),
            SessionOpened,
        )
        headers = {"content-type": opened.content_type} if opened.content_type else {}
        if not opened.session:  # the harness answered something else: no stream
            return httpx.Response(opened.status, headers=headers, stream=_Body(b""))
        stream = _SessionBytes(_Session(self._relay, opened.session))
        return httpx.Response(opened.status, headers=headers, stream=stream)


class RemoteTerminal:
    """A terminal on another node, used as the dashboard uses a terminal
    WebSocket: iterate for frames (``str`` or ``bytes``), :meth:`send` text
    frames, :meth:`close`. A relay that stops answering ends the frames
    with an ``{"type": "error"}`` text frame saying so."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        try:
            async for frame in self._session.frames():
                yield frame.text if frame.text is not None else frame.data
        except HiveError as exc:
            if not self._session.closed:
                yield json.dumps({"type": "error", "text": str(exc)})
            return
        if self._session.reason:
            yield json.dumps({"type": "error", "text": self._session.reason})

    async def send(self, text: str) -> None:
        """One text frame to the shell (one larger than a push may carry is
        dropped, as the harness drops input past its own cap).

        Raises:
            Unavailable: the terminal or its relay is gone.
        """
        if len(text) > MAX_PUSH_CHARS:
            log.info("terminal frame of %d characters dropped", len(text))
            return
        await self._session.relay.request(
            subjects.PAGE_PUSH, PushRequest(session=self._session.id, text=text), Ok
        )

    async def close(self) -> None:
        await self._session.close()


async def open_terminal(nc: NATS, node: str, agent: str, cols: int, rows: int) -> RemoteTerminal:
    """A new shell on agent ``agent``'s side, on node ``node``.

    Raises:
        Unavailable: the relay does not answer, or the page refused the terminal.
    """
    relay = _Relay(nc, node, agent)
    opened = await relay.request(
        subjects.PAGE_TERMINAL,
        TerminalOpen(cols=cols, rows=rows),
        SessionOpened,
        timeout=OPEN_TIMEOUT_S,
    )
    return RemoteTerminal(_Session(relay, opened.session))
