"""Service wiring: registers handlers on the runtime (see hyperhive.common.service)."""

from __future__ import annotations

from hyperhive.common.service import Runtime


async def start(rt: Runtime) -> None:
    """Registers this service's handlers; ``ping`` is served by the runner."""
