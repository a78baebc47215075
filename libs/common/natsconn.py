"""Connecting to NATS: credentials, inbox prefix, retries, reconnects."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.client import Server

from hyperhive.common import retry
from hyperhive.common.config import NatsSettings
from hyperhive.common.errors import Unavailable

log = logging.getLogger(__name__)

BACKOFF_CAP_S = retry.NATS_RECONNECT_CAP_S  # the longest wait between two tries


def backoff_delay(
    failures: int,
    base: float,
    cap: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """The wait before the next reconnect try: capped exponential, with jitter.

    The ceiling doubles with each failure (``base``, ``2*base``, … up to
    ``cap``); the wait is drawn from its upper half, so that clients that lost
    the server together do not come back in lockstep.

    Args:
        failures: tries that failed since the connection was lost (0 before
            the first).
        base: the first ceiling (seconds).
        cap: the largest ceiling.
        rand: a source of numbers in [0, 1).
    """
    return retry.Backoff(base, cap).delay(failures + 1, rand=rand)


def _reconnect_handler(
    base: float,
) -> Callable[[list[Server], dict[str, Any]], tuple[Server | None, float]]:
    """nats-py's ``reconnect_to_server_handler``: the server that failed least
    so far, and the backoff that its failures call for."""

    def choose(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        if not servers:
            return None, backoff_delay(0, base)
        server = min(servers, key=lambda s: s.reconnects)
        return server, backoff_delay(server.reconnects, base)

    return choose


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    seed_file: str | None = None,
    inbox_prefix: str | None = None,
    attempts: int | None = None,
) -> NATS:
    """Connects with retries and exponential backoff.

    Once connected the client reconnects by itself forever, waiting
    :func:`backoff_delay` between tries (from ``connect_backoff_s`` up to
    ``BACKOFF_CAP_S``, jittered), so a NATS restart is survived without the
    caller doing anything.

    Args:
        settings: the NATS settings (url, seed file, inbox prefix, retries).
        name: the client name shown by the server.
        seed_file: overrides ``settings.seed_file`` (an nkey seed file).
        inbox_prefix: overrides ``settings.inbox_prefix``.
        attempts: overrides ``settings.connect_attempts``.

    Raises:
        Unavailable: the server could not be reached after every attempt.
    """
    seed = seed_file if seed_file is not None else settings.seed_file
    prefix = inbox_prefix if inbox_prefix is not None else settings.inbox_prefix
    tries = max(1, attempts if attempts is not None else settings.connect_attempts)
    policy = retry.Backoff(settings.connect_backoff_s, BACKOFF_CAP_S, jitter=False)
    errors_seen: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        # before the first connect succeeds, errors are collected for the one
        # line we raise; afterwards they are logged
        if nc_ready:
            await _on_error(exc)
        else:
            errors_seen.append(exc)
            log.debug("nats connect attempt failed: %s", exc)

    nc_ready = False
    holder: list[NATS] = []

    async def on_disconnect() -> None:
        # a close we asked for is not worth a warning (the CLI closes on exit)
        if nc_ready and holder and not (holder[0].is_closed or holder[0].is_draining):
            log.warning("nats disconnected")

    options: dict[str, object] = {
        "servers": [settings.url],
        "name": name,
        # Retries of the first connect are ours (bounded, with backoff): the
        # client gets one quick try per attempt. Once connected, the client
        # reconnects by itself forever (switched on below).
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0,
        # used by nats-py only when it reconnects (never for the first connect)
        "reconnect_to_server_handler": _reconnect_handler(settings.connect_backoff_s),
        "connect_timeout": 2,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": _on_reconnect,
    }
    if seed:
        options["nkeys_seed"] = seed
    if prefix:
        options["inbox_prefix"] = prefix
    last: BaseException | None = None
    for attempt in range(1, tries + 1):
        try:
            nc = await nats.connect(**options)  # type: ignore[arg-type]
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            last = errors_seen[-1] if errors_seen else exc
            if attempt < tries:
                await asyncio.sleep(policy.delay(attempt))
            continue
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        nc_ready = True
        holder.append(nc)
        return nc
    reason = str(last) or type(last).__name__
    raise Unavailable(f"cannot reach NATS at {settings.url} after {tries} attempts: {reason}")


async def _on_error(exc: Exception) -> None:
    log.warning("nats error: %s", exc or type(exc).__name__)


async def _on_reconnect() -> None:
    log.info("nats reconnected")


async def sync_subscriptions(nc: NATS) -> None:
    """Returns once every subscription made so far is live on the server.

    nats-py 2.16 writes a flush's PING straight to the socket while a new SUB
    may still sit in the client's buffer, so one ``flush()`` can come back
    before the server has seen the SUB. The buffer is written on the next
    loop tick, long before the first PONG arrives; a second PING is then
    queued behind the SUB, and its PONG proves the server processed it.
    """
    await nc.flush()
    await nc.flush()
