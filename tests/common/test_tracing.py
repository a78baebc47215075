"""Trace context travels in NATS headers: one trace from caller to handler."""

import uuid

from opentelemetry import trace

from hyperhive.common import rpc, wire
from hyperhive.common.natsconn import sync_subscriptions
from hyperhive.common.telemetry import current_traceparent
from tests.rig import parse_traceparent, span_exporter


async def test_handler_span_joins_the_callers_trace(service_nc):
    exporter = span_exporter()
    subject = f"hive.admin.trace{uuid.uuid4().hex[:8]}.verb"
    responder = rpc.Responder(service_nc, queue="t")
    seen_trace_ids = []

    async def handler(req: wire.Empty, call: rpc.Call) -> wire.Ok:
        assert "traceparent" in call.headers
        seen_trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        return wire.Ok()

    await responder.serve_subject(subject, wire.Empty, handler)
    await sync_subscriptions(service_nc)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("operator action") as root:
        await rpc.request(service_nc, subject, wire.Empty(), wire.Ok)
    await responder.stop()
    trace_id = root.get_span_context().trace_id
    assert seen_trace_ids == [trace_id]
    names = {s.name: s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
    assert f"request {subject}" in names and f"handle {subject}" in names
    assert names[f"handle {subject}"].parent.span_id == names[f"request {subject}"].context.span_id


def test_current_traceparent_names_the_current_span():
    span_exporter()
    assert current_traceparent() is None  # no span, no trace context
    with trace.get_tracer("test").start_as_current_span("work") as span:
        value = current_traceparent()
    assert value is not None
    ctx = span.get_span_context()
    assert parse_traceparent(value) == (ctx.trace_id, ctx.span_id)
