"""The one path of a system event into an inbox: persisted, retried, once.

A service that has news for an agent (crash-watch's ``ContainerCrash`` and
``AgentStuck``, approvals' outcomes and answers) calls :func:`submit`: the
event, its recipient and an idempotency key go to the JetStream stream
``HIVE_DELIVERIES`` with the key as ``Nats-Msg-Id``. ``submit`` returns once
JetStream has stored it (the PubAck); from then on the event survives any
broker outage and any restart of the service that reported it.

The broker follows the stream with one durable pull consumer
(:func:`consume`): it inserts each event into the recipient's inbox keyed by
``(system, key)`` (so a repeated record stores nothing) and acks the record
only after the insert committed; an insert that fails for a transient reason
is handed out again later, one the broker refuses for good (an unknown
recipient, a malformed record) is logged and dropped. The stream is a work
queue: an acked record is gone.

Before the PubAck the reporter keeps the event: approvals in its table (a
row not yet ``notified`` is submitted again by its settle loop), crash-watch
in memory, retrying with :data:`retry.SYSTEM_DELIVERY` until NATS takes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from hyperhive.common import retry, subjects
from hyperhive.common.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from hyperhive.common.telemetry import inject_headers
from hyperhive.common.wire.broker import DeliverRequest
from hyperhive.common.wire.events import SystemEvent

log = logging.getLogger(__name__)

ACK_WAIT_S: Final = 30.0  # an insert not acked in this time is handed out again
FETCH_BATCH: Final = 32
FETCH_WAIT_S: Final = 5.0
PUBLISH_TIMEOUT_S: Final = 5.0
_decoder = msgspec.json.Decoder(DeliverRequest)
_encoder = msgspec.json.Encoder()

# what the broker refuses for good; anything else is tried again later
FINAL: Final = (BadRequest, NotFound, Forbidden, Conflict)
# what a NATS client raises while the server or the stream is away
NATS_DOWN: Final = (nats.errors.Error, OSError, TimeoutError)


async def submit(js: JetStreamContext, to: str, event: SystemEvent, key: str) -> None:
    """Hands ``event`` for ``to``'s inbox to ``HIVE_DELIVERIES``.

    ``key`` names the event for good: a second submit with the same key puts
    nothing more in the inbox.

    Raises:
        Unavailable: JetStream did not store it (NATS down, no stream).
    """
    req = DeliverRequest(to=to, event=event, idempotency_key=key)
    try:
        await js.publish(
            subjects.DELIVERIES,
            _encoder.encode(req),
            timeout=PUBLISH_TIMEOUT_S,
            stream=subjects.DELIVERIES_STREAM,
            headers=inject_headers({"Nats-Msg-Id": key}),
        )
    except NATS_DOWN as exc:
        reason = str(exc) or type(exc).__name__
        raise Unavailable(f"system event {key} not stored: {reason}") from None


async def submit_until_stored(js: JetStreamContext, to: str, event: SystemEvent, key: str) -> None:
    """:func:`submit`, retried until JetStream stores it (or cancelled): for a
    reporter with no table of its own."""
    await retry.retry(
        lambda: submit(js, to, event, key),
        retry.SYSTEM_DELIVERY,
        on=(Unavailable,),
        what=f"storing system event {key}",
    )


Insert = Callable[[DeliverRequest], Awaitable[object]]


async def consume(js: JetStreamContext, insert: Insert, stop: asyncio.Event) -> None:
    """The broker's side: every record of ``HIVE_DELIVERIES`` through ``insert``
    until ``stop`` is set.

    ``insert`` raising one of :data:`FINAL` means never: the record is dropped
    and logged; any other error means "not now": the record is handed out
    again after :data:`retry.DELIVERY_REDELIVER`.
    """
    failures = 0
    while not stop.is_set():
        try:
            sub = await js.pull_subscribe(
                subjects.DELIVERIES,
                durable=subjects.DELIVERIES_CONSUMER,
                stream=subjects.DELIVERIES_STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_deliver=-1
                ),
            )
        except NATS_DOWN as exc:
            failures += 1
            log.warning("deliveries consumer not bound (%d): %r", failures, exc)
            await _pause(stop, retry.FOLLOW.delay(failures))
            continue
        failures = 0
        try:
            info = await sub.consumer_info()
            log.info("following %s (%d waiting)", subjects.DELIVERIES_STREAM, info.num_pending)
            await _drain(sub, insert, stop)
        except NATS_DOWN as exc:
            failures += 1
            log.warning("deliveries consumer lost: %r", exc)
            await _pause(stop, retry.FOLLOW.delay(failures))
        finally:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection gone: the durable stays on the server
                log.debug("unsubscribe: %s", exc)


async def _drain(
    sub: JetStreamContext.PullSubscription, insert: Insert, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch=FETCH_BATCH, timeout=FETCH_WAIT_S)
        except TimeoutError:  # nats-py raises its own or the builtin one
            # nothing new; or the consumer is gone (NotFoundError: bound again)
            await sub.consumer_info()
            continue
        for msg in msgs:
            await _one(msg, insert)


async def _one(msg: Msg, insert: Insert) -> None:
    try:
        req = _decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        log.error("dropping a malformed system event record: %s", exc)
        await msg.term()
        return
    key = req.idempotency_key or "?"
    try:
        await insert(req)
    except FINAL as exc:
        log.error("system event %s for %s refused for good: %s", key, req.to, exc)
        await msg.term()
        return
    except Exception as exc:  # the top of this record's handling: any other fault is "not now"
        wait = retry.DELIVERY_REDELIVER.delay(msg.metadata.num_delivered)
        log.warning(
            "system event %s not in %s's inbox yet (%s); again in %.0fs",
            key,
            req.to,
            str(exc) or type(exc).__name__,
            wait,
        )
        await msg.nak(delay=wait)
        return
    await msg.ack_sync()
    log.info("system event %s is in %s's inbox", key, req.to)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass
