"""The agent page relay: a node serves its agents' pages to the hub's dashboard.

The node agent mounts it with :func:`serve` (``await serve_subject(nc, settings,
node)``, then ``await relay.stop()`` at shutdown). It answers
``hive.node.<node>.page.<agent>.<op>`` (wire types in
:mod:`hyperhive.common.wire.page`) by forwarding to the agent's page socket
on this host (:class:`~hyperhive.common.pagesocket.PageSocket`, the same hop
the dashboard takes to an agent on its own host):

- ``status``, ``prompt``, ``cancel``, ``credentials``: one call of the
  harness route of that name; only a JSON answer's body travels back (any
  other answer travels as its status and media type alone, and the
  dashboard refuses it as it refuses one from a local socket).
- ``events``: opens the SSE tail; ``terminal``: opens a terminal WebSocket.
  Each is a session the dashboard pulls from (``pull``, a long poll), pushes
  terminal frames to (``push``) and ends (``close``). A session holds at most
  ``READ_AHEAD_BYTES`` unpulled: past that the relay stops reading from the
  harness (the harness's own bounds take over). A session not pulled from
  for ``SESSION_IDLE_S`` is closed: the dashboard went away.

The relay only replies: a node's NATS user needs no publish right beyond the
reply subjects of the requests it receives. Who may call it is NATS's
business: only the operator's user may publish on ``hive.node.*.page.>``
(:func:`hyperhive.common.nats_auth.operator_permissions`), never an agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from nats.aio.client import Client as NATS
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BadRequest, Conflict, NotFound, Unavailable
from hyperhive.common.names import check_agent_name
from hyperhive.common.pagesocket import PageSocket
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.page import (
    MAX_PULL_BYTES,
    PULL_WAIT_S,
    SESSION_IDLE_S,
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

__all__ = ["PageRelay", "serve"]

log = logging.getLogger(__name__)

JSON = "application/json"
SSE = "text/event-stream"
# op → the harness route it calls
CALLS: dict[str, tuple[str, str]] = {
    subjects.PAGE_STATUS: ("GET", "/api/status"),
    subjects.PAGE_PROMPT: ("POST", "/api/prompt"),
    subjects.PAGE_CANCEL: ("POST", "/api/cancel"),
    subjects.PAGE_CREDENTIALS: ("POST", "/api/credentials"),
}
MAX_BODY_BYTES = 256 * 1024  # a JSON answer passed on (the dashboard's cap too)
READ_AHEAD_BYTES = 1024 * 1024  # per session, read from the harness but not yet pulled
MAX_FRAME_BYTES = 64 * 1024  # SSE bytes are cut into frames of at most this
MAX_SESSIONS = 256  # open at once on this node: more is a runaway dashboard


def _media(response: httpx.Response) -> str:
    """The answer's media type, '' for one sent compressed (never decoded here)."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return ""
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _size(frame: PageFrame) -> int:
    return len(frame.data) + len(frame.text or "")


class _Session:
    """One open tail or terminal: frames read from the harness, held until pulled."""

    def __init__(self, agent: str, kind: str, closer: Callable[[], Awaitable[None]]) -> None:
        self.id = secrets.token_urlsafe(16)
        self.agent = agent
        self.kind = kind
        self.ws: ClientConnection | None = None  # the terminal's
        self.pump: asyncio.Task[None] | None = None
        self._closer = closer
        self._frames: list[PageFrame] = []  # frames number base, base+1, ...
        self._base = 0
        self._held = 0
        self._done = False
        self._reason = ""
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self.last_seen = time.monotonic()

    @property
    def held(self) -> int:
        """Bytes read from the harness and not yet pulled (acknowledged)."""
        return self._held

    async def put(self, frame: PageFrame) -> None:
        """Holds ``frame`` for the next pull; waits while the read-ahead is full."""
        while self._held >= READ_AHEAD_BYTES and not self._done:
            self._room.clear()
            await self._room.wait()
        if self._done:
            return
        self._frames.append(frame)
        self._held += _size(frame)
        self._changed.set()

    def finish(self, reason: str = "") -> None:
        """No more frames: a pull that took them all says ``end``."""
        if not self._done:
            self._done, self._reason = True, reason
        self._changed.set()
        self._room.set()

    async def pull(self, have: int, wait_s: float) -> PullReply:
        """Frames from ``have`` on (waiting up to ``wait_s`` for one)."""
        self.last_seen = time.monotonic()
        if not self._base <= have <= self._base + len(self._frames):
            raise BadRequest(f"session has frames {self._base}.., not {have}")
        for frame in self._frames[: have - self._base]:
            self._held -= _size(frame)
        del self._frames[: have - self._base]
        self._base = have
        self._room.set()
        if not self._frames and not self._done:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
        out: list[PageFrame] = []
        size = 0
        for frame in self._frames:
            if out and size + _size(frame) > MAX_PULL_BYTES:
                break
            out.append(frame)
            size += _size(frame)
        end = self._done and len(out) == len(self._frames)
        self.last_seen = time.monotonic()
        return PullReply(first=self._base, frames=out, end=end, reason=self._reason if end else "")

    async def close(self, reason: str) -> None:
        self.finish(reason)
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pump
        with contextlib.suppress(Exception):
            await self._closer()


class PageRelay:
    """Serves ``hive.node.<node>.page.>`` for the agents whose page sockets are here."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        node: str,
        *,
        pull_wait_s: float = PULL_WAIT_S,
        idle_s: float = SESSION_IDLE_S,
        responder: rpc.Responder | None = None,
    ) -> None:
        self._node = check_agent_name(node, allow_manager=True)
        self._pages = PageSocket(settings)
        # the node agent's own responder, if it passes one (it stops it then)
        self._own_responder = responder is None
        self._responder = responder or rpc.Responder(nc, queue=f"pagerelay.{self._node}")
        self._sessions: dict[str, _Session] = {}
        self._pull_wait_s = pull_wait_s
        self._idle_s = idle_s
        self._reaper: asyncio.Task[None] | None = None

    @property
    def node(self) -> str:
        return self._node

    @property
    def served(self) -> list[str]:
        """The subjects (patterns) this relay answers."""
        mine = f"{subjects.ROOT}.node.{self._node}.page."
        return [s for s in self._responder.served if s.startswith(mine)]

    @property
    def sessions(self) -> int:
        """Sessions open now (tails and terminals)."""
        return len(self._sessions)

    def held(self) -> int:
        """Bytes held for all sessions (read from harnesses, not yet pulled)."""
        return sum(session.held for session in self._sessions.values())

    async def start(self) -> None:
        """Subscribes; from now on the dashboard reaches this node's agent pages."""
        serve_subject = self._responder.serve_subject
        for op in subjects.PAGE_CALLS:
            await serve_subject(subjects.node_page_op(self._node, op), PageCall, self._call)
        await serve_subject(
            subjects.node_page_op(self._node, subjects.PAGE_EVENTS), EventsOpen, self._events
        )
        await serve_subject(
            subjects.node_page_op(self._node, subjects.PAGE_TERMINAL), TerminalOpen, self._terminal
        )
        await serve_subject(
            subjects.node_page_op(self._node, subjects.PAGE_PULL), PullRequest, self._pull
        )
        await serve_subject(
            subjects.node_page_op(self._node, subjects.PAGE_PUSH), PushRequest, self._push
        )
        await serve_subject(
            subjects.node_page_op(self._node, subjects.PAGE_CLOSE), SessionRequest, self._close
        )
        self._reaper = asyncio.create_task(self._reap(), name=f"pagerelay-reaper-{self._node}")
        log.info("page relay serving", extra={"node": self._node})

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ends every session (waiting pulls hear ``end`` at once), then stops serving."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session in list(self._sessions.values()):
            session.finish(f"the page relay on node {self._node} stopped")
        await asyncio.sleep(0)  # waiting pulls answer before the responder stops
        if self._own_responder:
            await self._responder.stop(grace_s)
        for session in list(self._sessions.values()):
            await self._end(session, "relay stopped")

    # --- one-shot calls ------------------------------------------------------------

    async def _call(self, req: PageCall, call: rpc.Call) -> PageAnswer:
        _node, agent, op = subjects.parse_node_page(call.subject)
        method, path = CALLS[op]
        headers = {"accept": JSON, "accept-encoding": "identity"}
        body = req.body.encode()
        if body:
            headers["content-type"] = JSON
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest("request too long")
        async with self._pages.client(agent) as client:
            try:
                async with client.stream(method, path, headers=headers, content=body) as r:
                    media = _media(r)
                    if media != JSON:  # passed on as a type only: the dashboard refuses it
                        return PageAnswer(status=r.status_code, content_type=media)
                    data = await _read_capped(r)
            except httpx.HTTPError as exc:
                raise Unavailable(
                    f"agent page of {agent} does not answer ({type(exc).__name__})"
                ) from None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise Unavailable(f"agent page of {agent} answered JSON that is not UTF-8") from None
        return PageAnswer(status=r.status_code, content_type=JSON, body=text)

    # --- sessions --------------------------------------------------------------------

    def _admit(self) -> None:
        if len(self._sessions) >= MAX_SESSIONS:
            raise Conflict(f"too many open agent page sessions on node {self._node}")

    async def _events(self, req: EventsOpen, call: rpc.Call) -> SessionOpened:
        _node, agent, _op = subjects.parse_node_page(call.subject)
        self._admit()
        headers = {"accept": SSE, "accept-encoding": "identity"}
        if req.last_event_id:
            headers["last-event-id"] = req.last_event_id
        params = {"after": req.after} if req.after else {}
        client = self._pages.client(agent, stream=True)
        try:
            upstream = await client.send(
                client.build_request("GET", "/api/events", headers=headers, params=params),
                stream=True,
            )
        except httpx.HTTPError as exc:
            await client.aclose()
            raise Unavailable(
                f"agent page of {agent} does not answer ({type(exc).__name__})"
            ) from None
        media = _media(upstream)
        if media != SSE:  # no session: the dashboard refuses the type
            await upstream.aclose()
            await client.aclose()
            return SessionOpened(session="", status=upstream.status_code, content_type=media)

        async def closer() -> None:
            await upstream.aclose()
            await client.aclose()

        session = _Session(agent, subjects.PAGE_EVENTS, closer)
        session.pump = asyncio.create_task(self._pump_sse(session, upstream))
        self._sessions[session.id] = session
        return SessionOpened(session=session.id, status=upstream.status_code, content_type=SSE)

    async def _pump_sse(self, session: _Session, upstream: httpx.Response) -> None:
        reason = ""
        try:
            async for chunk in upstream.aiter_raw():
                for i in range(0, len(chunk), MAX_FRAME_BYTES):
                    await session.put(PageFrame(data=chunk[i : i + MAX_FRAME_BYTES]))
        except httpx.HTTPError as exc:
            reason = f"the agent page's stream broke ({type(exc).__name__})"
        session.finish(reason)

    async def _terminal(self, req: TerminalOpen, call: rpc.Call) -> SessionOpened:
        _node, agent, _op = subjects.parse_node_page(call.subject)
        self._admit()
        ws = await self._pages.terminal(agent, req.cols, req.rows)
        session = _Session(agent, subjects.PAGE_TERMINAL, ws.close)
        session.ws = ws
        session.pump = asyncio.create_task(self._pump_ws(session, ws))
        self._sessions[session.id] = session
        log.info("terminal of %s opened through the relay", agent)
        return SessionOpened(session=session.id)

    async def _pump_ws(self, session: _Session, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                if isinstance(frame, bytes):
                    await session.put(PageFrame(data=frame))
                else:
                    await session.put(PageFrame(text=frame))
        session.finish()  # the shell ended: a clean end (a reason means something broke)

    def _session(self, call: rpc.Call, session_id: str) -> _Session:
        _node, agent, _op = subjects.parse_node_page(call.subject)
        session = self._sessions.get(session_id)
        if session is None or session.agent != agent:
            raise NotFound(f"no page session {session_id} of {agent} on node {self._node}")
        return session

    async def _pull(self, req: PullRequest, call: rpc.Call) -> PullReply:
        return await self._session(call, req.session).pull(req.have, self._pull_wait_s)

    async def _push(self, req: PushRequest, call: rpc.Call) -> Ok:
        session = self._session(call, req.session)
        if session.ws is None:
            raise BadRequest("only a terminal takes frames")
        session.last_seen = time.monotonic()
        try:
            await session.ws.send(req.text)
        except ConnectionClosed:
            raise Unavailable("the terminal is closed") from None
        return Ok()

    async def _close(self, req: SessionRequest, call: rpc.Call) -> Ok:
        session = self._sessions.get(req.session)
        if session is not None:
            self._session(call, req.session)  # the same agent's, or NotFound
            await self._end(session, "closed by the dashboard")
        return Ok()

    async def _end(self, session: _Session, why: str) -> None:
        if self._sessions.pop(session.id, None) is not None:
            log.info("page session of %s ended: %s", session.agent, why)
            await session.close(why)

    async def _reap(self) -> None:
        """Closes the sessions nobody pulls from any more."""
        while True:
            await asyncio.sleep(min(self._idle_s / 4, 5.0))
            cutoff = time.monotonic() - self._idle_s
            for session in list(self._sessions.values()):
                if session.last_seen < cutoff:
                    await self._end(session, "not pulled from (the dashboard went away)")


async def _read_capped(response: httpx.Response) -> bytes:
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Unavailable("the agent page's answer is too long")
    return body


async def serve(nc: NATS, settings: Settings, node: str, **kw: Any) -> PageRelay:
    """Starts the page relay of ``node`` on ``nc`` (the node agent's connection).

    Returns the running relay; ``await relay.stop()`` ends it. Keywords:
    ``responder`` (an ``rpc.Responder`` of the node agent to serve on, so its
    ``served`` lists the relay's subjects too; the node agent stops it),
    ``pull_wait_s`` and ``idle_s`` (tests).

    Raises:
        BadRequest: ``node`` is not a valid node name.
    """
    relay = PageRelay(nc, settings, node, **kw)
    await relay.start()
    return relay
