"""The dashboard's only way to the hive: typed ``hive.admin.*`` requests.

Reads use a short timeout so that a service which is down shows as down in
its own section instead of holding up the page; operator actions get a long
one because they may build a container.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS

from hyperhive.common import endpoints as E
from hyperhive.common import rpc, subjects
from hyperhive.common.activity import Entry
from hyperhive.common.config import DashboardSettings
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import HiveError
from hyperhive.common.wire.base import Ping, Pong
from hyperhive.common.wire.lifecycle import Heartbeat

_heartbeat = msgspec.json.Decoder(Heartbeat)

T = TypeVar("T", bound=msgspec.Struct)

# Services the status bar pings, in the order of the page (it shows NATS,
# PostgreSQL and the dashboard itself as well).
WATCHED: tuple[str, ...] = tuple(s for s in subjects.SERVICES if s != "dashboard")


class Hive:
    """Typed operator requests over one shared NATS connection."""

    def __init__(self, nc: NATS, settings: DashboardSettings) -> None:
        self.nc = nc
        self.read_timeout = settings.section_timeout_s
        self.action_timeout = settings.action_timeout_s
        self.started_at = time.time()
        self.last_errors: dict[str, tuple[str, float]] = {}  # part → (error, when)
        # the activity timeline the event hub keeps (None: read the stream)
        self.activity_feed: Callable[[], list[Entry] | None] | None = None

    async def read(self, endpoint: Endpoint[Any, T], payload: msgspec.Struct) -> T:
        """A read for a page section (short timeout).

        Raises:
            Unavailable, RequestTimeout: the service is down or too slow.
            HiveError: the service answered with an error.
        """
        return await rpc.call(self.nc, endpoint, payload, timeout=self.read_timeout)

    async def act(self, endpoint: Endpoint[Any, T], payload: msgspec.Struct) -> T:
        """An operator action (long timeout: it may build a container)."""
        return await rpc.call(self.nc, endpoint, payload, timeout=self.action_timeout)

    async def logins_needed(self, names: list[str]) -> dict[str, str]:
        """The agents whose harness says the API refused its credentials (its
        last heartbeat's ``login_needed``), with the API's words. Best effort:
        without the state bucket nothing is reported."""
        try:
            kv = await self.nc.jetstream().key_value(subjects.STATE_BUCKET)
        except Exception:
            return {}
        found: dict[str, str] = {}
        for name in names:
            try:
                entry = await kv.get(subjects.heartbeat_key(name))
                beat = _heartbeat.decode(entry.value or b"")
            except Exception:
                continue  # no heartbeat yet, or one this dashboard cannot read
            if beat.login_needed:
                found[name] = beat.login_needed
        return found

    async def services(self) -> list[Health]:
        """Every part the hive needs, in the order of the status bar: NATS (this
        dashboard's connection), PostgreSQL (as the services that use it see
        it), each service (ping), and the dashboard itself. Each keeps the
        last error it had, with its time."""
        pongs = await asyncio.gather(*(self._ping(p) for p in WATCHED))
        by_part = dict(zip(WATCHED, pongs, strict=True))
        parts: list[Health] = [self._nats()]
        parts.append(self._postgres(by_part))
        for part in WATCHED:
            pong = by_part[part]
            if isinstance(pong, Pong):
                parts.append(self._health(part, None, f"v{pong.version}", pong.started_at))
            else:
                parts.append(self._health(part, pong))
        parts.append(self._health("dashboard", None, "serving this page", self.started_at))
        return parts

    async def _ping(self, part: str) -> Pong | str:
        try:
            return await self.read(E.PING[part], Ping())
        except HiveError as exc:
            return str(exc)

    def _nats(self) -> Health:
        if self.nc.is_connected:
            return self._health(
                "nats", None, self.nc.connected_url.netloc if self.nc.connected_url else ""
            )
        error = str(self.nc.last_error or "not connected")
        return self._health("nats", error)

    def _postgres(self, pongs: dict[str, Pong | str]) -> Health:
        """Up if a service that uses it says so; down with the first error one reports."""
        said = {p: v.database for p, v in pongs.items() if isinstance(v, Pong) and v.database}
        if any(state == "ok" for state in said.values()):
            bad = [f"{p}: {v}" for p, v in said.items() if v != "ok"]
            return self._health(
                "postgres", bad[0] if bad else None, f"seen by {', '.join(sorted(said))}"
            )
        if said:
            part, state = next(iter(said.items()))
            return self._health("postgres", f"{part} says {state.removeprefix('error: ')}")
        return self._health("postgres", "unknown: no service that uses it answers")

    def _health(
        self, part: str, error: str | None, detail: str = "", since: float | None = None
    ) -> Health:
        now = time.time()
        if error is not None:
            self.last_errors[part] = (error, now)
        last = self.last_errors.get(part)
        return Health(
            part=part,
            up=error is None,
            detail=detail if error is None else error,
            since=since,
            last_error=last[0] if last else "",
            last_error_at=last[1] if last else None,
        )


@dataclass(frozen=True, slots=True)
class Health:
    """One part of the hive in the status bar."""

    part: str
    up: bool
    detail: str  # e.g. the version; the reason when down
    since: float | None = None  # when it started (services, the dashboard)
    last_error: str = ""  # the last error seen, also once it is up again
    last_error_at: float | None = None
