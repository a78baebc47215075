"""A stand-in harness for the node tests: it takes its messages from the
broker (``recv`` with ack, over its own NATS credentials, as the real
harness does) and writes each one down in its state dir, ``received.txt``:
``<sender>\t<system event type or ->\t<body>``. A message ``notes: <text>``
also makes ``<text>`` its notes, recorded in their history as the real
harness records them after a turn. Run by the process backend with the
environment the backend gives every harness."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from hyperhive.common import rpc, subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.errors import HiveError
from hyperhive.common.natsconn import connect
from hyperhive.common.notes import CHANGE, NOTES_FILE, NotesHistory
from hyperhive.common.wire.broker import RecvReply, RecvRequest


async def main() -> None:
    name = os.environ["HIVE_HARNESS_AGENT"]
    state = Path(os.environ["HIVE_HARNESS_STATE_DIR"])
    out = state / "received.txt"
    nc = await connect(
        NatsSettings(url=os.environ["HIVE_NATS_URL"], connect_attempts=20),
        name=f"recv-{name}",
        seed_file=os.environ["HIVE_NATS_SEED_FILE"],
        inbox_prefix=os.environ["HIVE_NATS_INBOX_PREFIX"],
    )
    ack: int | None = None
    while True:
        try:
            reply = await rpc.request(
                nc,
                subjects.agent(name, subjects.AGENT_RECV),
                RecvRequest(wait_ms=2000, ack=ack),
                RecvReply,
                timeout=10,
            )
        except HiveError:
            await asyncio.sleep(0.2)
            continue
        ack = None
        if reply.message is None:
            continue
        m = reply.message
        kind = type(m.event).__name__ if m.event is not None else "-"
        with out.open("a") as f:
            f.write(f"{m.sender}\t{kind}\t{' '.join(m.body.split())}\n")
        if m.body.startswith("notes: "):
            text = m.body.removeprefix("notes: ").encode()
            (state / NOTES_FILE).write_bytes(text)
            NotesHistory(state).record(text, CHANGE)
        ack = m.id


if __name__ == "__main__":
    asyncio.run(main())
