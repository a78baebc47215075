"""Putting a system event into an inbox from a service's own loop.

Crash-watch and lifecycle's node watch report things nobody asked about (a
crash, a lost node): the broker's ``deliver`` is retried with a growing delay
while the broker is away, and deduplicated by the caller's key, so a report
is neither lost to a broker restart nor doubled by a retry.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS

from hyperhive.common import rpc, subjects
from hyperhive.common.errors import HiveError, Unavailable
from hyperhive.common.wire.broker import DeliverRequest, SendReply
from hyperhive.common.wire.events import SystemEvent

log = logging.getLogger(__name__)

DELIVER_ATTEMPTS = 6


async def deliver(
    nc: NATS, to: str, event: SystemEvent, key: str, *, timeout: float, what: str
) -> bool:
    """Delivers ``event`` to ``to``'s inbox (``what`` names it in the logs).

    Returns:
        Whether the broker took it (an error is logged, never raised).
    """
    delay = 0.5
    for attempt in range(1, DELIVER_ATTEMPTS + 1):
        try:
            await rpc.request(
                nc,
                subjects.system("broker", "deliver"),
                DeliverRequest(to=to, event=event, idempotency_key=key or None),
                SendReply,
                timeout=timeout,
            )
            return True
        except (Unavailable, TimeoutError) as exc:
            if attempt == DELIVER_ATTEMPTS:
                log.error("could not deliver %s: %s", what, exc)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        except HiveError as exc:
            log.error("broker refused %s: %s", what, exc)
            return False
    return False


__all__ = ["DELIVER_ATTEMPTS", "deliver"]
