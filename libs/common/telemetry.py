"""OpenTelemetry: SDK set-up per entry point, trace context in NATS headers.

Library code only uses the API (``trace.get_tracer(__name__)``) through
:func:`span`; each process calls :func:`setup_tracing` once. The exporter is
off unless configured, and then no SDK is installed and no span is made: the
trace context callers sent is only passed on (:func:`span`), so a trace stays
one trace through a process that does not export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.util.types import Attributes

from hyperhive.common.config import TelemetrySettings
from hyperhive.common.errors import ConfigError

_installed = False


def setup_tracing(settings: TelemetrySettings, service: str) -> None:
    """Installs the tracer provider for this process (once); none for exporter ``none``.

    Raises:
        ConfigError: an unknown exporter name.
    """
    global _installed
    if _installed:
        return
    if settings.exporter in ("none", ""):
        # spans nobody exports cost 8-10 % of the broker's CPU (profiled under
        # load): without a provider, span() only carries the callers' context
        _installed = True
        return
    # the SDK only where spans are exported (it is several MB of imports)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create(
        {"service.name": f"hive-{service}", "service.namespace": settings.service_namespace}
    )
    provider = TracerProvider(resource=resource)
    match settings.exporter:
        case "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        case "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = (
                OTLPSpanExporter(endpoint=settings.otlp_endpoint)
                if settings.otlp_endpoint
                else OTLPSpanExporter()
            )
            provider.add_span_processor(BatchSpanProcessor(exporter))
        case other:
            raise ConfigError(f"telemetry.exporter must be none, console or otlp, not {other!r}")
    trace.set_tracer_provider(provider)
    _installed = True


def recording() -> bool:
    """True when this process has a tracer provider (an SDK installed by
    :func:`setup_tracing`, or by a test): spans are then made and exported."""
    # the API hands out its proxy until a provider is set (a dict lookup)
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: trace.SpanKind,
    parent: context.Context | None = None,
    attributes: Attributes = None,
) -> Iterator[trace.Span]:
    """The current span ``name`` (a child of ``parent``, else of the current one)
    while inside, when spans are recorded (:func:`recording`).

    Otherwise no span is made: ``parent``, if given, becomes the current
    context, so what is sent or stored meanwhile carries the caller's trace
    context (:func:`inject_headers`, :func:`current_traceparent`); the span
    yielded records nothing.
    """
    if recording():
        with tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes
        ) as current:
            yield current
        return
    if parent is None:
        yield trace.get_current_span()
        return
    token = context.attach(parent)
    try:
        yield trace.get_current_span()
    finally:
        context.detach(token)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as NATS headers (``traceparent``...)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> context.Context:
    """The trace context a NATS message carried, for a consumer span."""
    if not headers or (TRACEPARENT not in headers and "baggage" not in headers):
        return context.Context()  # what the propagators make of no header, sooner
    return propagate.extract(headers)


TRACEPARENT = "traceparent"  # the W3C trace context header


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, to store with what it wrote.

    Stored with a message or an outbox row, it lets a later reader (the
    recipient's turn, a HIVE_EVENTS consumer) continue the same trace. None
    when there is no trace context.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


def traceparent_context(traceparent: str | None) -> context.Context:
    """The trace context a stored ``traceparent`` names, to continue its trace;
    an empty context (a new trace) without one."""
    if not traceparent or not traceparent.strip():
        return context.Context()
    return extract_context({TRACEPARENT: traceparent})
