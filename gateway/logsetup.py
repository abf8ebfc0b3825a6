"""Structured logs like the backend's: JSON lines off a terminal, readable on one.

A log line carries figures (batch size, bytes, duration_ms, attempt), never a token or key,
and the trace and span ids of the span it was written in (when tracing is on).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from gateway.tracing import add_trace_ids

# Whatever a caller passes by mistake, these never reach a log line.
_SECRET_KEYS = frozenset({"token", "api_key", "enrollment_key", "password", "authorization"})


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in _SECRET_KEYS & event.keys():
        event[name] = "[redacted]"
    return event


def configure(level: str = "info") -> None:
    """Configure structlog once per process."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
