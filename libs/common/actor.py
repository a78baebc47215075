"""Who caused a change: the actor recorded as ``by`` in each event.

A request carries its actor in the ``Hive-Actor`` NATS header, and the
responder sets it for the handler from what it can trust:

- ``hive.agent.<n>.*``: the agent ``n`` (the subject is its identity; a
  header an agent sends is ignored);
- ``hive.admin.*``: the operator, as the operator's tool says (``operator
  via dashboard (token "…")``, ``operator via cli (user@host)``), else
  ``operator``;
- ``hive.system.*``: the actor the calling service passes on (the operator
  whose approve started a build), else ``system``.

:func:`hyperhive.common.outbox.make_event` writes the current actor into the
event's ``by``; a change from a service's own loop (a crash restart, an
auto-update) has none and reads as the system.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

from hyperhive.common import subjects

HEADER: Final = "Hive-Actor"
MAX_ACTOR: Final = 200
SYSTEM: Final = subjects.SYSTEM
OPERATOR: Final = subjects.OPERATOR

_AGENT: Final = f"{subjects.ROOT}.agent."
_ADMIN: Final = f"{subjects.ROOT}.admin."
_SYSTEM: Final = f"{subjects.ROOT}.system."

_current: ContextVar[str | None] = ContextVar("hive_actor", default=None)


def current() -> str | None:
    """The actor of the work running now, if one is known."""
    return _current.get()


def set_actor(actor: str | None) -> None:
    """Sets the actor for the rest of the current task (e.g. a CLI command)."""
    _current.set(clean(actor) if actor else None)


@contextlib.contextmanager
def acting_as(actor: str | None) -> Iterator[None]:
    """Runs the block as ``actor``."""
    token = _current.set(clean(actor) if actor else None)
    try:
        yield
    finally:
        _current.reset(token)


def clean(value: str) -> str:
    """One printable line of at most MAX_ACTOR characters."""
    flat = "".join(c if c.isprintable() else " " for c in value).strip()
    return flat[:MAX_ACTOR]


def headers() -> dict[str, str]:
    """The header that passes the current actor on (empty if none)."""
    actor = current()
    return {HEADER: actor} if actor else {}


def of_request(subject: str, headers: dict[str, str]) -> str | None:
    """The actor of a request on ``subject`` (see the module doc)."""
    claimed = clean(headers.get(HEADER, ""))
    if subject.startswith(_AGENT):
        return subject.split(".")[2]
    if subject.startswith(_ADMIN):
        return claimed or OPERATOR
    if subject.startswith(_SYSTEM):
        return claimed or SYSTEM
    return None
