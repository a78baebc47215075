"""Wire types shared by every subject family."""

from __future__ import annotations

import msgspec


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str


class ErrorReply(msgspec.Struct, kw_only=True):
    """The one error shape every handler replies with."""

    error: ErrorInfo


class Ok(msgspec.Struct, kw_only=True):
    ok: bool = True


class Empty(msgspec.Struct, kw_only=True):
    """A request with no parameters."""


class Ping(msgspec.Struct, kw_only=True):
    pass


class Pong(msgspec.Struct, kw_only=True):
    service: str
    version: str
    pid: int
    started_at: float
    database: str = ""  # "ok", an error, or "" for a service without one
    # requests this instance is handling, this ping included (a waiting recv is one)
    in_flight: int = 0
