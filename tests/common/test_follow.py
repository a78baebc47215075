"""follow(): HIVE_EVENTS in order, from a sequence, a time or now, across a lost consumer."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import msgspec
from nats.js import JetStreamContext

from hyperhive.common import follow, subjects
from hyperhive.common.jetstream import ensure_streams
from hyperhive.common.outbox import make_event
from tests import rig


async def _js(service_nc) -> JetStreamContext:  # type: ignore[no-untyped-def]
    js = service_nc.jetstream()
    await ensure_streams(js)
    return js


async def _publish(js: JetStreamContext, kind: str, n: int) -> int:
    ack = await js.publish(subjects.event(kind), msgspec.json.encode(make_event(kind, n=n)))
    return ack.seq


async def _take(it, count: int) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    out = []
    async with asyncio.timeout(20):
        while len(out) < count:
            seq, ev = await anext(it)
            out.append((seq, ev.data["n"]))
    return out


async def test_follow_from_a_sequence_a_time_and_now(service_nc):
    js = await _js(service_nc)
    kind = f"test.f{uuid.uuid4().hex[:8]}"
    filters = (subjects.event(kind),)
    seqs = [await _publish(js, kind, n) for n in range(3)]
    after_first = follow.follow(js, filters, after_seq=seqs[0])
    assert await _take(after_first, 2) == [(seqs[1], 1), (seqs[2], 2)]
    await after_first.aclose()
    since = follow.follow(js, filters, since=time.time() - 60)
    assert await _take(since, 3) == list(zip(seqs, range(3), strict=True))
    await since.aclose()

    started = asyncio.Event()
    now = follow.follow(js, filters, ready=started.set)
    first = asyncio.ensure_future(anext(now))
    await asyncio.wait_for(started.wait(), 10)
    later = await _publish(js, kind, 3)
    seq, ev = await asyncio.wait_for(first, 10)
    assert (seq, ev.data["n"]) == (later, 3)  # nothing from before it started
    await now.aclose()


async def test_a_lost_consumer_is_replaced_without_gap_or_repeat(service_nc):
    js = await _js(service_nc)
    kind = f"test.g{uuid.uuid4().hex[:8]}"
    seen: list[int] = []

    def handle(_seq: int, ev) -> None:  # type: ignore[no-untyped-def]
        seen.append(ev.data["n"])

    task = await follow.start_following(js, handle, [subjects.event(kind)], name="t")
    try:
        await _publish(js, kind, 0)
        await rig.eventually(lambda: seen == [0], what="first record")
        # the server loses the follower's consumer (as a NATS restart would)
        names = [c.name async for c in _consumers(js)]
        for name in names:
            await js.delete_consumer(subjects.EVENTS_STREAM, name)
        assert names
        for n in (1, 2, 3):
            await _publish(js, kind, n)
        await rig.eventually(lambda: len(seen) >= 4, timeout=30, what="records after the loss")
        assert seen == [0, 1, 2, 3]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _consumers(js: JetStreamContext):  # type: ignore[no-untyped-def]
    for info in await js.consumers_info(subjects.EVENTS_STREAM):
        if info.name.startswith("follow-"):
            yield info
