"""The dashboard's only way to the hive: typed ``hive.admin.*`` requests.

Reads use a short timeout so that a service which is down shows as down in
its own section instead of holding up the page; operator actions get a long
one because they may build a container.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS

from hyperhive.common import rpc, subjects
from hyperhive.common.config import DashboardSettings
from hyperhive.common.errors import HiveError
from hyperhive.common.wire.base import Ping, Pong

T = TypeVar("T", bound=msgspec.Struct)

# Services whose liveness the status bar shows, in the order of the page.
WATCHED: tuple[str, ...] = tuple(s for s in subjects.SERVICES if s != "dashboard")


class Hive:
    """Typed operator requests over one shared NATS connection."""

    def __init__(self, nc: NATS, settings: DashboardSettings) -> None:
        self.nc = nc
        self.read_timeout = settings.section_timeout_s
        self.action_timeout = settings.action_timeout_s

    async def read(self, part: str, verb: str, payload: msgspec.Struct | None, reply: type[T]) -> T:
        """A read for a page section (short timeout).

        Raises:
            Unavailable, RequestTimeout: the service is down or too slow.
            HiveError: the service answered with an error.
        """
        return await rpc.request(
            self.nc, subjects.admin(part, verb), payload, reply, timeout=self.read_timeout
        )

    async def act(self, part: str, verb: str, payload: msgspec.Struct | None, reply: type[T]) -> T:
        """An operator action (long timeout: it may build a container)."""
        return await rpc.request(
            self.nc, subjects.admin(part, verb), payload, reply, timeout=self.action_timeout
        )

    async def services(self) -> dict[str, str | None]:
        """Pings every watched service: ``{part: None if up else the reason}``."""

        async def ping(part: str) -> str | None:
            try:
                await self.read(part, "ping", Ping(), Pong)
            except HiveError as exc:
                return str(exc)
            return None

        results = await asyncio.gather(*(ping(p) for p in WATCHED))
        return dict(zip(WATCHED, results, strict=True))
