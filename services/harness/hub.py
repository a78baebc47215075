"""The in-memory side of the turn events: a ring of recent records and the live tail.

Every record the harness publishes on ``hive.agent.<n>.events`` also goes
here, numbered locally and encoded once as an SSE frame (``id:
<boot>:<n>``), so the agent page can follow the live tail over SSE without
a NATS subscription (an agent may not subscribe to its own events) and
resume after a reconnect from the last number it saw. The fan-out is
:class:`hyperhive.common.sse.Fanout`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec

from hyperhive.common import sse
from hyperhive.common.wire.broker import TurnEvent

RING_SIZE = 3000
PING_S = 15.0
_enc = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Record:
    n: int  # local number, increasing within one harness process
    event: TurnEvent


def turn_frame(event: TurnEvent, n: int | None = None, boot: str = "") -> bytes:
    """A ``turn`` SSE frame: the record's JSON, with its local number and id if live."""
    doc = msgspec.to_builtins(event)
    if n is None:
        return sse.frame("turn", _enc.encode(doc))
    doc["n"] = n
    return sse.frame("turn", _enc.encode(doc), f"{boot}:{n}")


class Hub:
    def __init__(self, size: int = RING_SIZE, ping_s: float = PING_S) -> None:
        self.boot = uuid.uuid4().hex[:12]  # tells a reconnecting page whether n still counts
        self.fanout = sse.Fanout(size, ping_s=ping_s)
        self._n = 0

    def add(self, event: TurnEvent) -> Record:
        self._n += 1
        rec = Record(self._n, event)
        self.fanout.publish(sse.Item(rec.n, turn_frame(event, rec.n, self.boot), value=rec))
        return rec

    def snapshot(self, after: int = 0) -> list[Record]:
        """Records newer than ``after`` still in the ring."""
        ring = self.fanout.ring
        return [i.value for i in ring.since(ring.after_key(after))]

    @property
    def oldest_ts(self) -> float | None:
        """Timestamp of the oldest record kept (None when empty)."""
        ring = self.fanout.ring
        kept = ring.since(ring.base, ring.base + 1)
        return kept[0].value.event.ts if kept else None

    @property
    def last_n(self) -> int:
        return self._n

    def close(self) -> None:
        """Ends every live tail (at shutdown)."""
        self.fanout.close()
