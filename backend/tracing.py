"""OpenTelemetry for the backend: spans go out over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT
is set, and nowhere otherwise.

Off (the default) no SDK provider is installed: `span` hands out one shared do-nothing
context manager (not even the API's no-op tracer runs), the request middleware passes
requests straight through, and the helpers return at their first check. On, each worker
process exports in batches from a background thread; the standard OTEL_* variables apply
(OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_HEADERS, ...).

Every HTTP request gets a server span named by its route template, continuing the caller's
W3C `traceparent`: so `POST /v2/ingest/logs` continues the gateway's `upload` span, and
backend/ingest.py's `db.write` is its child. A command's span context travels with its
NOTIFY (backend/control/hub.py) to the instance holding the gateway's socket, whose
`command.deliver` span puts its own context in the command; the gateway's result carries
its `command.run` context back, which `command.result` continues.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

SERVICE_NAME = "td-backend"
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"

# A proxy: spans start on whatever provider `configure` installs, or on the no-op one.
tracer = trace.get_tracer(SERVICE_NAME)
# Only W3C trace context, never baggage: a caller's headers must not ride along.
_propagator = TraceContextTextMapPropagator()
_provider: Any = None
# What `span` gives with tracing off: entering it returns the API's invalid span, whose
# setters do nothing.
_OFF = nullcontext(trace.INVALID_SPAN)


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK with an OTLP/HTTP exporter if the endpoint is set; True if it did.

    Called in each worker process (granian's workers are processes of their own)."""
    global _provider
    environ = os.environ if environ is None else environ
    if _provider is not None or not environ.get(ENDPOINT_VARIABLE, "").strip():
        return _provider is not None
    # Imported here: a backend with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def flush() -> None:
    """Export what is still queued (at shutdown; the SDK also does this at interpreter exit)."""
    if _provider is not None:
        _provider.force_flush()


def enabled() -> bool:
    return _provider is not None


def span(
    name: str,
    *,
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes = None,
    links: Sequence[Link] | None = None,
) -> AbstractContextManager[Span]:
    """A span made current for the `with` block; with tracing off, a shared no-op one."""
    if _provider is None:
        return _OFF
    return tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, links=links
    )


def traceparent() -> str:
    """The current span's context as a W3C `traceparent` value; "" without one."""
    if _provider is None:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def continued(value: str | None) -> context.Context | None:
    """The context a `traceparent` value names (from a peer); None if empty or malformed."""
    if _provider is None or not value:
        return None
    found = _propagator.extract({"traceparent": value})
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: a server span per HTTP request, continuing the caller's trace."""

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        if _provider is None or scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        method = str(scope.get("method", "GET"))
        # Litestar routes before app-level middleware runs: the template is known here, and
        # ids in the path stay out of the span's name.
        route = str(scope.get("path_template") or "unmatched")
        with tracer.start_as_current_span(
            f"{method} {route}",
            context=_propagator.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        ) as span:

            async def send_and_record(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await app(scope, receive, send_and_record)

    return traced


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current trace and span ids, when a span is recording."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = trace.format_trace_id(span_context.trace_id)
        event["span_id"] = trace.format_span_id(span_context.span_id)
    return event
