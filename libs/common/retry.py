"""One back-off policy and one retry loop for every transient fault.

Each place that waits out a fault (NATS or PostgreSQL not reachable yet, a
peer service away, the API down) names its policy here or builds one from
its settings, and either asks :meth:`Backoff.delay` for the next wait (a
loop that keeps its own state, e.g. in a table) or hands its call to
:func:`retry`. What is retried and what ends the loop stay with the caller:
``on`` (the errors worth another try), ``give_up`` (an error among them that
is final after all), ``tries`` (None: until it works or is cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

FLOOR_S: Final = 0.05  # the shortest first ceiling: a zero base would spin


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential back-off.

    The ceiling doubles with each failure in a row (``base_s``, ``2*base_s``,
    … up to ``max_s``). With ``jitter`` the wait is drawn from the ceiling's
    upper half, so that clients that lost a server together do not come back
    in lockstep; without, it is the ceiling.
    """

    base_s: float
    max_s: float
    jitter: bool = True

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failed tries in a row (1: the first)."""
        base = max(self.base_s, FLOOR_S) if self.jitter else max(self.base_s, 0.0)
        exponent = min(max(0, failures - 1), 64)  # no overflow however long it lasts
        return float(min(self.max_s, base * 2.0**exponent))

    def delay(
        self, failures: int, *, hint_s: float = 0.0, rand: Callable[[], float] = random.random
    ) -> float:
        """The wait after ``failures`` failed tries in a row, never shorter than
        ``hint_s`` (a server's retry-after)."""
        ceiling = self.ceiling(failures)
        wait = ceiling / 2 + rand() * ceiling / 2 if self.jitter else ceiling
        return max(wait, hint_s)


# --- the named policies (seconds); settings-driven ones are built from settings
NATS_RECONNECT_CAP_S: Final = 5.0  # at start and on reconnect (base: nats.connect_backoff_s)
DB_CONNECT_CAP_S: Final = 5.0  # base: database.connect_backoff_s
PEER_SERVICE = Backoff(0.5, 10.0)  # waiting for another service to answer once
SYSTEM_DELIVERY = Backoff(0.5, 10.0)  # handing a system event to the deliveries stream
DELIVERY_REDELIVER = Backoff(1.0, 30.0, jitter=False)  # broker: an inbox insert that failed
ACK = Backoff(0.5, 2.5, jitter=False)  # harness: acking a finished message
RECV = Backoff(0.5, 5.0, jitter=False)  # harness: the long-poll recv failing
FOLLOW = Backoff(0.5, 5.0)  # a follower of HIVE_EVENTS that lost its consumer
NO_RESPONDERS = Backoff(0.02, 0.2, jitter=False)  # a responder's SUB not yet seen
NO_RESPONDERS_TRIES: Final = 5


async def retry(
    attempt: Callable[[], Awaitable[T]],
    policy: Backoff,
    *,
    on: tuple[type[BaseException], ...],
    give_up: Callable[[BaseException], bool] = lambda _exc: False,
    tries: int | None = None,
    what: str = "",
) -> T:
    """``attempt()`` until it returns, sleeping ``policy.delay`` after each
    failure with one of ``on``.

    Args:
        give_up: an error of ``on`` for which another try is pointless; it is
            raised at once.
        tries: at most this many calls (None: no limit; cancel to stop).
        what: logged at each failure (nothing when empty).

    Raises:
        BaseException: the last error when ``tries`` ran out, a ``give_up``
            error, or any error not in ``on``.
    """
    failures = 0
    while True:
        try:
            return await attempt()
        except on as exc:
            failures += 1
            if give_up(exc) or (tries is not None and failures >= tries):
                raise
            wait = policy.delay(failures)
            if what:
                log.warning("%s failed (%d): %s; again in %.1fs", what, failures, exc, wait)
            await asyncio.sleep(wait)
