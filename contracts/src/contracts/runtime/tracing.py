"""Traces: one trace per generation across the services (OpenTelemetry), its context carried in NATS headers as the
W3C `traceparent` (and `tracestate`), as HTTP carries it.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then spans go there over
OTLP/HTTP in batches, configured by the SDK's own `OTEL_*` variables. When off the SDK is never imported and every
hook here returns at its first line: `span` hands out one shared no-op context manager and `inject` returns the
headers it was given, so a request or publish builds no span and no header.

The hooks sit where the hub's messages go: a NATS request (client span, context injected) and its answer (server
span, parent from the request's headers) in contracts.runtime.bus and .service, JetStream publishes
(`publish_durably`), and the consumers of job messages and events (`span(..., parent=msg.headers)`). While a span is
current, every log line carries its `trace_id` and `span_id` (`log_processors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from contracts.runtime.config import Settings

if TYPE_CHECKING:  # the SDK is imported only when tracing is on (see configure)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
Attribute = str | int | float | bool | None
# The headers that carry a trace's context (W3C Trace Context), in NATS messages and HTTP requests alike.
CONTEXT_HEADERS = ("traceparent", "tracestate")

_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


class _Tracing:
    """What tracing needs while it is on: the tracer and the W3C propagator."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace import SpanKind as OtelKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("genimage-hub")
        self.propagator: TraceContextTextMapPropagator = TraceContextTextMapPropagator()
        self.kinds = {
            "internal": OtelKind.INTERNAL,
            "server": OtelKind.SERVER,
            "client": OtelKind.CLIENT,
            "producer": OtelKind.PRODUCER,
            "consumer": OtelKind.CONSUMER,
        }

    def span(
        self, name: str, kind: SpanKind, parent: Mapping[str, str] | None, attributes: dict[str, Attribute]
    ) -> AbstractContextManager[Any]:
        context = self.propagator.extract(parent) if parent else None
        return self.tracer.start_as_current_span(
            name,
            context=context,
            kind=self.kinds[kind],
            attributes={key: value for key, value in attributes.items() if value is not None},
        )


_on: _Tracing | None = None


def wanted(settings: Settings) -> bool:
    """Whether the settings ask for traces (an OTLP endpoint is set)."""
    return bool(settings.otlp_endpoint)


def configure(settings: Settings) -> bool:
    """Turn tracing on when an OTLP endpoint is set: spans are batched to it over OTLP/HTTP, under the service name
    `hub-<service>` (unless OTEL_SERVICE_NAME names another). Returns whether tracing is on."""
    if not wanted(settings):
        return False
    import os

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"hub-{settings.service}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers: the OTEL_* variables
    install(provider)
    return True


def install(provider: TracerProvider) -> None:
    """Trace through `provider` (configure's, or a test's with an in-memory exporter)."""
    global _on
    _on = _Tracing(provider)


def shutdown() -> None:
    """Send the spans still batched and turn tracing off (a stopping service)."""
    global _on
    if _on is not None:
        _on.provider.shutdown()
        _on = None


def enabled() -> bool:
    return _on is not None


def span(
    name: str, *, kind: SpanKind = "internal", parent: Mapping[str, str] | None = None, **attributes: Attribute
) -> AbstractContextManager[Any]:
    """A span, current while the `with` block runs, as a child of the current span or, with `parent` (the headers of
    a NATS message or HTTP request), of the span that sent them. Attributes that are None are left out."""
    if _on is None:
        return _NO_SPAN
    return _on.span(name, kind, parent, attributes)


def inject(headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """`headers` with the current span's context added (a copy), for a NATS message; `headers` itself when tracing is
    off or no span is current."""
    if _on is None:
        return headers
    carried = dict(headers or {})
    _on.propagator.inject(carried)
    return carried or headers


def http_parent(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The trace context headers of an ASGI request (a caller that traces too), to continue its trace."""
    if _on is None:
        return None
    found = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw_headers}
    return {name: found[name] for name in CONTEXT_HEADERS if name in found} or None


def rename(name: str) -> None:
    """Name the current span once its name is known (an HTTP route after routing)."""
    if _on is not None:
        from opentelemetry import trace

        trace.get_current_span().update_name(name)


def tag(**attributes: Attribute) -> None:
    """Add attributes to the current span once they are known (a job's id after it was made)."""
    if _on is not None:
        from opentelemetry import trace

        current = trace.get_current_span()
        for key, value in attributes.items():
            if value is not None:
                current.set_attribute(key, value)


def note_error(message: str) -> None:
    """Mark the current span failed, with the hub's error message (an answer that is an error envelope)."""
    if _on is not None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        trace.get_current_span().set_status(Status(StatusCode.ERROR, message))


def current_trace_id() -> str | None:
    """The current trace's id in hex (as trace viewers show it), or None."""
    if _on is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _add_trace_ids(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def log_processors() -> list[Any]:
    """structlog processors to run while tracing is on: each line gets the current span's trace and span id."""
    return [_add_trace_ids] if _on is not None else []
