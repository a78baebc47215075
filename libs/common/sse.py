"""Server-sent events for every hyperhive page: one frame encoder, one
fan-out, one response.

- :func:`frame` encodes one SSE frame with Litestar's
  :class:`~litestar.response.ServerSentEventMessage` (the wire format is
  Litestar's; ``\\n`` line ends).
- :class:`Fanout` keeps a ring of encoded frames and feeds any number of
  streams from it. A frame is encoded once, when it is published, and the
  same bytes go to every client: a client is a cursor into the ring, so a
  publish costs nothing per client. Clients are woken together (at most
  once per ``interval``, the first publish after a quiet spell at once),
  and everything that arrived since a client's last write goes out in one
  write. Each client's backlog is bounded by the ring: one that falls more
  than the ring behind (its socket stopped draining) is cut off, and its
  EventSource reconnects with ``Last-Event-ID``.
- :func:`response` is the streaming response with :data:`SSE_HEADERS`.

Litestar's own ``ServerSentEvent`` response encodes each item per client
(a ``ServerSentEventMessage`` per yield) and starts every stream with a
thread hop; for a fan-out to hundreds of clients the bytes are encoded
once here and streamed as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.response import ServerSentEventMessage, Stream

__all__ = [
    "MEDIA_TYPE",
    "PING",
    "SSE_HEADERS",
    "Fanout",
    "Item",
    "Ring",
    "frame",
    "json_frame",
    "response",
    "retry",
]

MEDIA_TYPE = "text/event-stream"
# no caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering)
SSE_HEADERS: Mapping[str, str] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING = b": ping\n\n"  # a comment line: keeps proxies and idle connections open
_json = msgspec.json.Encoder()


def frame(event: str, data: bytes | str, event_id: str | int | None = None) -> bytes:
    """One encoded SSE frame (``id``, ``event``, ``data`` lines)."""
    return ServerSentEventMessage(data=data, event=event, id=event_id, sep="\n").encode()


def json_frame(event: str, doc: Any, event_id: str | int | None = None) -> bytes:
    """One SSE frame whose data is ``doc`` as one line of JSON."""
    return frame(event, _json.encode(doc), event_id)


def retry(ms: int) -> bytes:
    """The reconnect delay an EventSource should use."""
    return ServerSentEventMessage(data=None, retry=ms, sep="\n").encode()


def response(
    body: AsyncIterator[bytes],
    *,
    headers: Mapping[str, str] | None = None,
    status_code: int = 200,
) -> Stream:
    """A ``text/event-stream`` response streaming ``body`` as it comes."""
    return Stream(
        body,
        media_type=MEDIA_TYPE,
        status_code=status_code,
        headers={**SSE_HEADERS, **(headers or {})},
    )


@dataclass(frozen=True, slots=True)
class Item:
    """One encoded frame with what clients resume and filter on."""

    key: int  # increasing: a reconnecting client resumes after the key it saw
    frame: bytes
    tags: tuple[str, ...] = ()  # a filtered client gets only items carrying its tag
    value: Any = None  # what the frame was encoded from, for in-process readers


class Ring:
    """An append-only window of items addressed by a running index."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._items: list[Item] = []
        self._base = 0  # running index of _items[0]

    @property
    def base(self) -> int:
        """The index of the oldest item kept."""
        return self._base

    @property
    def end(self) -> int:
        """The index the next item will get (a cursor at "now")."""
        return self._base + len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: Item) -> None:
        self._items.append(item)
        # trim in bulk, an eighth over size: amortised O(1), at most 12.5 % more kept
        if len(self._items) > self.size + self.size // 8:
            drop = len(self._items) - self.size
            del self._items[:drop]
            self._base += drop

    def since(self, cursor: int, end: int | None = None) -> list[Item]:
        """Items from ``cursor`` (the oldest kept if the cursor fell behind) to ``end``."""
        stop = len(self._items) if end is None else end - self._base
        return self._items[max(0, cursor - self._base) : stop]

    def tail(self, n: int) -> int:
        """A cursor that yields at most the last ``n`` items."""
        return max(self._base, self.end - n)

    def last_key(self) -> int:
        """The key of the newest item kept (0 when empty)."""
        return self._items[-1].key if self._items else 0

    def after_key(self, key: int) -> int:
        """A cursor at the first item whose key is above ``key``."""
        index = len(self._items)
        while index > 0 and self._items[index - 1].key > key:
            index -= 1
        return self._base + index


class Fanout:
    """A ring of encoded frames followed by any number of SSE streams.

    Args:
        size: frames kept (backfill for new clients, slack for slow ones).
        interval_s: clients are woken at most this often; what arrives in
            between goes out in the next write.
        ping_s: a stream with nothing to send gets a ping this often.
    """

    def __init__(self, size: int, *, interval_s: float = 0.0, ping_s: float = 15.0) -> None:
        self.ring = Ring(size)
        self.interval_s = interval_s
        self.ping_s = ping_s
        self.closed = False
        self.cut_off = 0  # clients dropped for falling more than the ring behind
        self._waiters: list[asyncio.Future[bool]] = []
        self._scheduled = False
        self._last_wake = float("-inf")
        self._pinger: asyncio.TimerHandle | None = None
        self._joined: tuple[int, int, bytes] = (0, 0, b"")  # (cursor, end, bytes)

    def publish(self, item: Item) -> None:
        """Adds one frame; followers get it at the next wake."""
        self.ring.append(item)
        if self._scheduled or not self._waiters:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        delay = self._last_wake + self.interval_s - loop.time()
        if delay <= 0:  # after a quiet spell: at once (still batching this loop pass)
            loop.call_soon(self._wake)
        else:
            loop.call_later(delay, self._wake)

    def close(self) -> None:
        """Ends every stream (at shutdown)."""
        self.closed = True
        if self._pinger is not None:
            self._pinger.cancel()
        self._resolve(False)

    async def follow(self, cursor: int, tag: str | None = None) -> AsyncIterator[bytes]:
        """Frames from ``cursor`` on, live, as few writes as possible.

        ``tag`` keeps only items carrying it. Ends when the fan-out closes or
        this stream falls more than the ring behind.
        """
        ring = self.ring
        ticked = False
        while not self.closed:
            end = ring.end
            if cursor < ring.base:
                self.cut_off += 1
                return
            if cursor < end:
                chunk = self._chunk(cursor, end, tag)
                cursor = end
                if chunk:
                    ticked = False  # the write kept the connection alive
                    yield chunk
                    continue
            if ticked:
                ticked = False
                yield PING
                continue
            # no await since reading ``end``: a publish from here on wakes this waiter
            ticked = await self._wait()

    def _chunk(self, cursor: int, end: int, tag: str | None) -> bytes:
        if tag:
            return b"".join(i.frame for i in self.ring.since(cursor, end) if tag in i.tags)
        # every unfiltered client that caught up last time asks for the same bytes
        joined = self._joined
        if joined[0] != cursor or joined[1] != end:
            joined = (cursor, end, b"".join(i.frame for i in self.ring.since(cursor, end)))
            self._joined = joined
        return joined[2]

    def _wait(self) -> asyncio.Future[bool]:
        # one future per waiter (not one shared): cancelling a stream's task
        # cancels only its own future
        loop = asyncio.get_running_loop()
        if self._pinger is None and not self.closed:
            self._pinger = loop.call_later(self.ping_s, self._ping)
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        return fut

    def _wake(self) -> None:
        self._scheduled = False
        self._last_wake = asyncio.get_running_loop().time()
        self._resolve(False)

    def _ping(self) -> None:
        self._pinger = asyncio.get_running_loop().call_later(self.ping_s, self._ping)
        self._resolve(True)

    def _resolve(self, ticked: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(ticked)
