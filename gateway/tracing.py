"""OpenTelemetry for the gateway: spans go out over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT
is set, and nowhere otherwise.

Off (the default) no SDK provider is installed and `span` hands out one shared do-nothing
context manager: not even the API's no-op tracer runs, whose spans cost microseconds each
on the agent post path (bench/tracing.py measures both). On, spans are exported in batches
by a background thread; the standard OTEL_* variables apply (OTEL_BSP_SCHEDULE_DELAY,
OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER, ...).

A log's journey: the agent's post (`POST /v1/logs`, continuing the agent's own `traceparent`
when it sends one) and its `buffer.commit`; the post's span context is stored with its logs
in the buffer (`current_packed`). An upload batch holds logs of many posts, so the `upload`
span starts a trace of its own with a LINK to each post it carries, and hands its context to
the backend in a `traceparent` header. A command's context arrives in its `traceparent`
field; the gateway's `command.run` continues it and the result carries its context back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

SERVICE_NAME = "td-gateway"
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
# The SDK keeps at most 128 links per span (OTEL_SPAN_LINK_COUNT_LIMIT); past that an upload
# says how many posts it left unlinked instead.
MAX_LINKS = 128
# trace id (16 bytes), span id (8), trace flags (1): a span context as the buffer stores it.
PACKED_SIZE = 25

# A proxy: spans start on whatever provider `configure` installs, or on the no-op one.
tracer = trace.get_tracer(SERVICE_NAME)
# Only W3C trace context, never baggage: an agent's headers must not ride along upstream.
_propagator = TraceContextTextMapPropagator()
# The empty context: a span started in it is the root of a new trace.
NEW_TRACE = context.Context()
_provider: Any = None
# What `span` gives with tracing off: entering it returns the API's invalid span, whose
# setters do nothing.
_OFF = nullcontext(trace.INVALID_SPAN)


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK with an OTLP/HTTP exporter if the endpoint is set; True if it did."""
    global _provider
    environ = os.environ if environ is None else environ
    if _provider is not None or not environ.get(ENDPOINT_VARIABLE, "").strip():
        return _provider is not None
    # Imported here: a gateway with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def shutdown() -> None:
    """Export what is still queued (the SDK also does this at interpreter exit)."""
    if _provider is not None:
        _provider.shutdown()


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


# ---- span contexts across the buffer, HTTP and the control channel ---------------------------


def current_packed() -> bytes | None:
    """The current span's context in PACKED_SIZE bytes, None without a recorded span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return (
        span_context.trace_id.to_bytes(16, "big")
        + span_context.span_id.to_bytes(8, "big")
        + bytes((span_context.trace_flags & 0xFF,))
    )


def unpack(packed: bytes | None) -> SpanContext | None:
    """The span context `current_packed` stored; None for anything else."""
    if packed is None or len(packed) != PACKED_SIZE:
        return None
    span_context = SpanContext(
        trace_id=int.from_bytes(packed[:16], "big"),
        span_id=int.from_bytes(packed[16:24], "big"),
        is_remote=True,
        trace_flags=TraceFlags(packed[24]),
    )
    return span_context if span_context.is_valid else None


def links_to(packed: Iterable[bytes | None]) -> tuple[list[Link], int]:
    """Links to the distinct stored span contexts (at most MAX_LINKS) and how many did not fit.

    With tracing off nothing was stored: every item is None.
    """
    seen: dict[bytes, SpanContext] = {}
    for item in packed:
        if item is not None and item not in seen:
            found = unpack(item)
            if found is not None:
                seen[item] = found
    contexts = list(seen.values())
    return [Link(c) for c in contexts[:MAX_LINKS]], max(0, len(contexts) - MAX_LINKS)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` to outgoing HTTP headers."""
    if _provider is not None:
        _propagator.inject(headers)


def extract(headers: Mapping[str, str]) -> context.Context | None:
    """The caller's trace context from incoming (lower-cased) HTTP headers, if it sent one.

    None means "the current context"; a malformed header is ignored, as W3C asks.
    """
    if _provider is None or "traceparent" not in headers:
        return None
    return _propagator.extract(headers)


def traceparent() -> str:
    """The current span's context as a W3C `traceparent` value; "" without one."""
    if _provider is None:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def continued(value: str) -> context.Context | None:
    """The context a `traceparent` value names (from a peer); None if empty or malformed."""
    if _provider is None or not value:
        return None
    found = _propagator.extract({"traceparent": value})
    return found if trace.get_current_span(found).get_span_context().is_valid else None


# ---- log lines -------------------------------------------------------------------------------


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current trace and span ids, when a span is recording."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event["trace_id"] = trace.format_trace_id(span_context.trace_id)
        event["span_id"] = trace.format_span_id(span_context.span_id)
    return event
