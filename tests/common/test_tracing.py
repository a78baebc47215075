"""Trace context travels in NATS headers: one trace from caller to handler."""

import subprocess
import sys
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


def test_without_an_exporter_no_span_is_made_and_the_callers_context_goes_on():
    # a process of its own: this one has the SDK installed by span_exporter()
    code = """
from opentelemetry import trace
from hyperhive.common.config import TelemetrySettings
from hyperhive.common import telemetry
telemetry.setup_tracing(TelemetrySettings(exporter="none"), "t")
assert not telemetry.recording()
caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
tracer = trace.get_tracer("t")
kind = trace.SpanKind.CONSUMER
parent = telemetry.extract_context({"traceparent": caller})
with telemetry.span(tracer, "handle", kind=kind, parent=parent) as span:
    assert not span.is_recording()
    assert telemetry.current_traceparent() == caller
    assert telemetry.inject_headers()["traceparent"] == caller
assert telemetry.current_traceparent() is None
with telemetry.span(tracer, "handle", kind=kind, parent=telemetry.extract_context({})):
    assert telemetry.current_traceparent() is None
import sys
assert "opentelemetry.sdk.trace" not in sys.modules, "the SDK was imported"
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
