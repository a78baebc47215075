"""The agent page relay (``hive.node.<node>.page.<agent>.<op>``).

The dashboard reaches the page API of an agent on another node through that
node's relay, which forwards each call to the agent's page socket there.
What travels is only what the dashboard's proxy passes on anyway: a JSON
body, ``Last-Event-ID``, the terminal's size and its text frames. No header
field exists for a cookie or a token, so none can be sent.

One-shot calls (status, prompt, cancel, credentials) are a :class:`PageCall`
answered by a :class:`PageAnswer`. The live tail and the terminal are
sessions: opened (:class:`EventsOpen`, :class:`TerminalOpen` →
:class:`SessionOpened`), then pulled from with long polls (:class:`PullRequest`
→ :class:`PullReply`), the terminal also pushed to (:class:`PushRequest`),
and closed (:class:`SessionRequest`). The relay only ever replies, so a node
needs no right to publish anywhere but the reply subjects of requests it got;
a pull is the flow control (the relay reads ahead a bounded amount), and a
session nobody pulls from for a while is closed by the relay.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "EventsOpen",
    "PageAnswer",
    "PageCall",
    "PageFrame",
    "PullReply",
    "PullRequest",
    "PushRequest",
    "SessionOpened",
    "SessionRequest",
    "TerminalOpen",
]

MAX_PUSH_CHARS = 256 * 1024  # one terminal frame pushed (the harness takes 64 KiB of input)
Size = Annotated[int, msgspec.Meta(ge=1, le=1000)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class PageCall(msgspec.Struct, kw_only=True):
    """A one-shot call: ``body`` is the JSON text posted (empty for a GET)."""

    body: str = ""


class PageAnswer(msgspec.Struct, kw_only=True):
    """The harness's answer, as it came (the dashboard checks it as it does
    one from a local socket): its HTTP status, media type and body."""

    status: int
    content_type: str = ""
    body: str = ""


class EventsOpen(msgspec.Struct, kw_only=True):
    """Opens the live tail (``GET /api/events``), resuming after an event id."""

    last_event_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    after: Annotated[str, msgspec.Meta(max_length=64)] = ""


class TerminalOpen(msgspec.Struct, kw_only=True):
    """Opens a terminal (a new login shell on the agent's side)."""

    cols: Size = 80
    rows: Size = 24


class SessionOpened(msgspec.Struct, kw_only=True):
    """A session is open: pull from it by ``session``. For the live tail,
    ``status`` and ``content_type`` are the harness's answer to the GET."""

    session: str
    status: int = 200
    content_type: str = ""


class PageFrame(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One piece of a session's output: bytes of the SSE stream or a binary
    terminal frame (``data``), or a text terminal frame (``text``)."""

    data: bytes = b""
    text: str | None = None


class PullRequest(msgspec.Struct, kw_only=True):
    """The next frames of a session. ``have``: how many frames the caller got
    so far; frames before it are dropped, later ones sent (again, if a reply
    was lost)."""

    session: SessionId
    have: Annotated[int, msgspec.Meta(ge=0)] = 0


class PullReply(msgspec.Struct, kw_only=True):
    """Frames ``first, first+1, …``; none when the wait ran out (a heartbeat).
    ``end``: the session is over; ``reason`` says why when it did not end by
    itself (the relay stopping, the harness's stream breaking), else empty."""

    first: int = 0
    frames: list[PageFrame] = msgspec.field(default_factory=list)
    end: bool = False
    reason: str = ""


class PushRequest(msgspec.Struct, kw_only=True):
    """One text frame to the terminal (input, resize)."""

    session: SessionId
    text: Annotated[str, msgspec.Meta(max_length=MAX_PUSH_CHARS)]


class SessionRequest(msgspec.Struct, kw_only=True):
    """Closes a session (the operator's side went away)."""

    session: SessionId


# --- timing both sides agree on ------------------------------------------------------

# a pull with nothing to send is answered empty after this (a heartbeat): a
# pull not answered within PULL_WAIT_S + PULL_GRACE_S means the relay is gone
PULL_WAIT_S = 5.0
PULL_GRACE_S = 3.0
# a session nobody pulled from (or pushed to) for this long is closed by the
# relay: the dashboard went away without saying so
SESSION_IDLE_S = 30.0
# the most one pull reply carries (raw bytes; NATS' default max payload is 1 MiB
# and bytes travel as base64)
MAX_PULL_BYTES = 256 * 1024
