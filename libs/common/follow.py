"""One way to follow ``HIVE_EVENTS``: typed events, in order, across reconnects.

:func:`follow` yields ``(stream sequence, HiveEvent)`` for every record on
the given subjects, from a stream sequence, a time or the next record on,
until the caller stops iterating. It reads with an ephemeral, in-memory,
unacknowledged consumer that it pulls from one batch at a time: an ordered
consumer. When that consumer is lost (NATS restarted, the connection was
down, the server dropped it) a new one starts right after the last record
handed out, so a reconnect leaves no gap and repeats nothing.

nats-py's own ``ordered_consumer=True`` is not used: when it resets before a
first record arrived it restarts at sequence 1 (a follower "from now" would
replay the whole stream), and it recreates a lost consumer only once.
The operator's credentials suffice (JetStream API requests, replies on its
own inbox), so ``hive tail`` uses it as the services do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hyperhive.common import retry, subjects
from hyperhive.common.errors import Unavailable
from hyperhive.common.wire.events import HiveEvent, decode_event

log = logging.getLogger(__name__)

BATCH: Final = 256  # records per pull request
WAIT_S: Final = 5.0  # how long one pull request waits for a record
INACTIVE_S: Final = 60.0  # the server drops the consumer of a follower that died
DELETE_TIMEOUT_S: Final = 1.0
# what the client raises while the server, the stream or the consumer is away
_LOST: Final = (nats.errors.Error, OSError)


async def follow(
    js: JetStreamContext,
    filters: Sequence[str] = (subjects.EVENTS_ALL,),
    *,
    after_seq: int | None = None,
    since: float | None = None,
    ready: Callable[[], None] | None = None,
) -> AsyncIterator[tuple[int, HiveEvent]]:
    """Every ``HIVE_EVENTS`` record on ``filters``, typed, in stream order.

    Args:
        filters: subjects (wildcards allowed) to follow.
        after_seq: start after this stream sequence (0: from the first record).
        since: else start at this unix time; with neither, at the next record.
        ready: called once the first consumer exists (records published from
            then on are seen).

    Yields:
        ``(stream sequence, event)``; records that are not a HiveEvent are skipped.

    Raises:
        Unavailable: ``HIVE_EVENTS`` cannot be read at start.
    """
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM)
    except _LOST as exc:
        raise Unavailable(f"cannot read {subjects.EVENTS_STREAM}: {exc}") from None
    # where the next consumer starts: a time until the first record, then a sequence
    start_time = None if since is None else datetime.fromtimestamp(since, UTC)
    if after_seq is not None:
        next_seq: int | None = max(after_seq, 0) + 1
    else:
        next_seq = info.state.last_seq + 1 if since is None else None
    failures = 0
    while True:
        name = f"follow-{uuid.uuid4().hex[:16]}"
        config = ConsumerConfig(
            name=name,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_S,
            mem_storage=True,
        )
        if len(filters) == 1:
            config.filter_subject = filters[0]
        else:
            config.filter_subjects = list(filters)
        if next_seq is None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = start_time
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = next_seq
        try:
            await js.add_consumer(subjects.EVENTS_STREAM, config)
            sub = await js.pull_subscribe_bind(
                durable=None, stream=subjects.EVENTS_STREAM, name=name
            )
        except _LOST as exc:
            failures += 1
            log.debug("follow: no consumer yet (%d): %s", failures, exc)
            await asyncio.sleep(retry.FOLLOW.delay(failures))
            continue
        if ready is not None:
            ready()
            ready = None
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=BATCH, timeout=WAIT_S)
                except TimeoutError:  # nats-py raises its own or the builtin one
                    # nothing new; or the consumer is gone (NotFoundError)
                    await js.consumer_info(subjects.EVENTS_STREAM, name)
                    continue
                failures = 0
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    next_seq = seq + 1
                    try:
                        event = decode_event(msg.data)
                    except msgspec.DecodeError:
                        log.warning("follow: undecodable record %d on %s", seq, msg.subject)
                        continue
                    yield seq, event
        except _LOST as exc:
            # consumer lost or connection down: a new consumer picks up after next_seq
            failures += 1
            log.debug("follow: consumer %s lost: %s", name, exc)
            await asyncio.sleep(retry.FOLLOW.delay(failures))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):  # else the server drops it when inactive
                await asyncio.wait_for(
                    js.delete_consumer(subjects.EVENTS_STREAM, name), timeout=DELETE_TIMEOUT_S
                )


async def follow_into(
    js: JetStreamContext,
    handle: Callable[[int, HiveEvent], object],
    filters: Sequence[str] = (subjects.EVENTS_ALL,),
    *,
    after_seq: int | None = None,
    since: float | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """:func:`follow`, each record handed to ``handle`` (awaited if it returns
    an awaitable), until cancelled. For a service's background task."""
    async for seq, event in follow(js, filters, after_seq=after_seq, since=since, ready=ready):
        result = handle(seq, event)
        if asyncio.iscoroutine(result):
            await result


async def start_following(
    js: JetStreamContext,
    handle: Callable[[int, HiveEvent], object],
    filters: Sequence[str] = (subjects.EVENTS_ALL,),
    *,
    after_seq: int | None = None,
    name: str = "follow",
) -> asyncio.Task[None]:
    """Starts :func:`follow_into` as a task and returns once its consumer
    exists, so that no record published after this returns is missed.

    Raises:
        Unavailable: ``HIVE_EVENTS`` cannot be read.
    """
    started = asyncio.Event()
    task = asyncio.create_task(
        follow_into(js, handle, filters, after_seq=after_seq, ready=started.set), name=name
    )
    waiter = asyncio.create_task(started.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()  # raises what stopped it
        raise Unavailable(f"following {subjects.EVENTS_STREAM} ended at once")
    return task
