"""One send followed by its trace: from the caller through the broker to the
recipient's ``recv``, and on the HIVE_EVENTS records of each transition."""

from __future__ import annotations

import asyncio
import json

from nats.aio.msg import Msg
from opentelemetry import trace

from hyperhive.common import subjects
from hyperhive.common.natsconn import sync_subscriptions
from tests.broker.conftest import Hive, ack, recv, send
from tests.rig import parse_traceparent, span_exporter


async def test_a_send_is_followed_to_the_recipient_and_its_events(hive: Hive):
    spans = span_exporter()
    a, na = await hive.spawn()
    b, nb = await hive.spawn()
    headers: dict[tuple[int, str], dict[str, str]] = {}
    arrived = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        record = json.loads(msg.data)
        headers[(record["data"]["id"], record["kind"])] = dict(msg.headers or {})
        arrived.set()

    sub = await hive.service.subscribe(subjects.event_family("message"), cb=on_event)
    await sync_subscriptions(hive.service)
    tracer = trace.get_tracer("test")
    try:
        with tracer.start_as_current_span("sender's tool call") as sender_span:
            sent = await send(na, a, b, "follow me")
        with tracer.start_as_current_span("recipient's turn") as turn_span:
            got = await recv(nb, b)
            assert got.message is not None and got.message.id == sent.id
            await ack(nb, b, sent.id)

        # recv hands over the send's trace context: the broker's span of the send
        assert got.message.traceparent is not None
        trace_id, span_id = parse_traceparent(got.message.traceparent)
        send_trace = sender_span.get_span_context().trace_id
        assert trace_id == send_trace
        handle = [
            s
            for s in spans.get_finished_spans()
            if s.name == f"handle {subjects.agent(a, subjects.AGENT_SEND)}"
            and s.context.trace_id == send_trace
        ]
        assert [s.context.span_id for s in handle] == [span_id]

        # each event carries the trace of the transaction that wrote it
        turn_trace = turn_span.get_span_context().trace_id
        expected = {
            subjects.EV_MESSAGE_SENT: send_trace,
            subjects.EV_MESSAGE_DELIVERED: turn_trace,
            subjects.EV_MESSAGE_ACKED: turn_trace,
        }

        def all_arrived() -> bool:
            return all((sent.id, kind) in headers for kind in expected)

        async with asyncio.timeout(30):
            while not all_arrived():
                arrived.clear()
                await arrived.wait()
        for kind, want in expected.items():
            tp = headers[(sent.id, kind)].get("traceparent")
            assert tp is not None, kind
            assert parse_traceparent(tp)[0] == want, kind
    finally:
        await sub.unsubscribe()
