"""One error hierarchy, translated once at each boundary.

On the wire an error is ``{"error": {"code": ..., "message": ...}}``; the
request helper turns it back into the matching ``HiveError`` subclass.
"""

from __future__ import annotations

from typing import ClassVar


class HiveError(Exception):
    """Root of every error hyperhive reports to a caller."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(HiveError, ValueError):
    code = "bad_request"


class NotFound(HiveError, LookupError):
    code = "not_found"


class Conflict(HiveError):
    code = "conflict"


class Forbidden(HiveError, PermissionError):
    code = "forbidden"


class Unavailable(HiveError, ConnectionError):
    """A dependency (NATS, Postgres, a service) cannot be reached."""

    code = "unavailable"


class RequestTimeout(HiveError, TimeoutError):
    code = "timeout"


class BackendFailed(HiveError):
    """A container backend command failed; the message carries its output."""

    code = "backend_failed"


class Internal(HiveError):
    code = "internal"


class ConfigError(HiveError):
    """A setting is missing or malformed; the program cannot start."""

    code = "config"


_BY_CODE: dict[str, type[HiveError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        NotFound,
        Conflict,
        Forbidden,
        Unavailable,
        RequestTimeout,
        BackendFailed,
        Internal,
        ConfigError,
    )
}


def from_code(code: str, message: str) -> HiveError:
    """The exception for an error reply's code (``Internal`` if unknown)."""
    return _BY_CODE.get(code, Internal)(message)
