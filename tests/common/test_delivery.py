"""HIVE_DELIVERIES: stored once per key, retried while the insert cannot be
done, dropped when it never can be (the broker end to end: tests/crashwatch)."""

from __future__ import annotations

import asyncio
import collections
import contextlib

from hyperhive.common import delivery, subjects
from hyperhive.common.errors import NotFound, Unavailable
from hyperhive.common.jetstream import ensure_streams
from hyperhive.common.wire.broker import DeliverRequest
from hyperhive.common.wire.events import ContainerCrash
from tests import rig


async def test_a_passing_failure_is_retried_a_final_one_dropped_a_repeat_stored_once(
    nats_server, service_nc
):
    await rig.reset_deliveries(nats_server)
    js = service_nc.jetstream()
    await ensure_streams(js)
    for key in ("again", "never", "again"):  # the repeat is the same event
        await delivery.submit(js, "hm1nd", ContainerCrash(agent="x", detail=key), key)
    info = await js.stream_info(subjects.DELIVERIES_STREAM)
    assert info.state.messages == 2

    tries: collections.Counter[str] = collections.Counter()
    inserted: list[str] = []

    async def insert(req: DeliverRequest) -> None:
        key = req.idempotency_key or ""
        tries[key] += 1
        if key == "never":
            raise NotFound("unknown recipient")
        if tries[key] == 1:
            raise Unavailable("database restarting")
        inserted.append(key)

    stop = asyncio.Event()
    task = asyncio.create_task(delivery.consume(js, insert, stop))
    try:
        await rig.eventually(lambda: inserted == ["again"], timeout=20, what="the retry")

        async def emptied() -> bool:
            return (await js.stream_info(subjects.DELIVERIES_STREAM)).state.messages == 0

        await rig.eventually(emptied, what="both records gone")
        assert tries == {"again": 2, "never": 1}
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
