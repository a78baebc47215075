"""The SSE kit: frames, the fan-out's sharing, batching, pings, bounds and shutdown."""

from __future__ import annotations

import asyncio

from hyperhive.common import sse


def item(key: int, *tags: str) -> sse.Item:
    return sse.Item(key, sse.json_frame("message", {"n": key}, key), tags)


def test_frames_are_litestar_sse_with_newline_ends() -> None:
    assert sse.frame("turn", b'{"a":1}', "boot:3") == b'id: boot:3\nevent: turn\ndata: {"a":1}\n\n'
    assert sse.json_frame("change", {"body": "<b>é</b>"}) == (
        'event: change\ndata: {"body":"<b>é</b>"}\n\n'.encode()
    )
    # a line break in the data cannot end the frame early or forge a field
    assert sse.frame("x", "a\nevent: forged") == b"event: x\ndata: a\ndata: event: forged\n\n"
    assert sse.retry(2000) == b"retry: 2000\n\n"


async def test_every_client_gets_the_same_bytes_in_one_write_per_wake() -> None:
    fan = sse.Fanout(100, interval_s=0.05, ping_s=60)
    streams = [fan.follow(fan.ring.end) for _ in range(3)]
    filtered = fan.follow(fan.ring.end, "bob")
    first = [asyncio.ensure_future(anext(s)) for s in [*streams, filtered]]
    await asyncio.sleep(0)
    fan.publish(item(1, "alice", "bob"))  # after a quiet spell: at once
    fan.publish(item(2, "carol"))  # the same loop pass: the same write
    chunks = await asyncio.wait_for(asyncio.gather(*first), 5)
    assert chunks[0] == item(1).frame + item(2).frame
    assert chunks[0] is chunks[1] is chunks[2]  # joined once, shared
    assert chunks[3] == item(1).frame
    # within the interval, publishes wait for one wake together
    second = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0)
    for key in (3, 4, 5):
        fan.publish(item(key))
        await asyncio.sleep(0.005)
    assert not any(f.done() for f in second)
    got = await asyncio.wait_for(asyncio.gather(*second), 5)
    assert got[0] == item(3).frame + item(4).frame + item(5).frame
    fan.close()
    for s in [*streams, filtered]:
        await s.aclose()


async def test_a_cancelled_client_does_not_disturb_the_others() -> None:
    fan = sse.Fanout(10, ping_s=60)
    quitter, stayer = fan.follow(0), fan.follow(0)
    q, s = asyncio.ensure_future(anext(quitter)), asyncio.ensure_future(anext(stayer))
    await asyncio.sleep(0)
    q.cancel()  # a browser went away while both were waiting
    await asyncio.sleep(0)
    fan.publish(item(1))
    assert await asyncio.wait_for(s, 5) == item(1).frame


async def test_an_idle_stream_is_pinged_and_close_ends_it() -> None:
    fan = sse.Fanout(10, ping_s=0.05)
    stream = fan.follow(0)
    assert await asyncio.wait_for(anext(stream), 5) == sse.PING
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    fan.close()
    done, _ = await asyncio.wait({waiting}, timeout=5)
    assert done and isinstance(waiting.exception(), StopAsyncIteration)


async def test_a_client_that_falls_behind_the_ring_is_cut_off() -> None:
    fan = sse.Fanout(4, ping_s=60)
    stream = fan.follow(0)
    fan.publish(item(1))
    assert await anext(stream) == item(1).frame
    for key in range(2, 20):  # the client does not read meanwhile: its frames are dropped
        fan.publish(item(key))
    ended = False
    try:
        await asyncio.wait_for(anext(stream), 5)
    except StopAsyncIteration:
        ended = True
    assert ended and fan.cut_off == 1
    # a reconnect resumes from what is kept after the last key it saw
    assert fan.ring.since(fan.ring.after_key(1))[0].key > 2
