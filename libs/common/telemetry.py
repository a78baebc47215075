"""OpenTelemetry: SDK set-up per entry point, trace context in NATS headers.

Library code only uses the API (``trace.get_tracer(__name__)``); each process
calls :func:`setup_tracing` once. The exporter is off unless configured.
"""

from __future__ import annotations

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from hyperhive.common.config import TelemetrySettings
from hyperhive.common.errors import ConfigError

_installed = False


def setup_tracing(settings: TelemetrySettings, service: str) -> None:
    """Installs the tracer provider for this process (once).

    Raises:
        ConfigError: an unknown exporter name.
    """
    global _installed
    if _installed:
        return
    resource = Resource.create(
        {"service.name": f"hive-{service}", "service.namespace": settings.service_namespace}
    )
    provider = TracerProvider(resource=resource)
    match settings.exporter:
        case "none" | "":
            pass
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


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as NATS headers (``traceparent``...)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> context.Context:
    """The trace context a NATS message carried, for a consumer span."""
    return propagate.extract(headers or {})


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
