"""Structured logs: JSON lines when stderr is not a terminal, readable console otherwise.

Log events carry figures (gateway id, batch size, duration_ms), never a key, token or password,
and the trace and span ids of the span they were written in (when tracing is on).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from backend.tracing import add_trace_ids

# Keys that must never reach a log line, whatever a caller passes by mistake.
_SECRET_KEYS = frozenset(
    {"password", "api_key", "token", "admin_token", "enrollment_key", "secret_key", "key"}
)


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in _SECRET_KEYS & event.keys():
        event[name] = "[redacted]"
    return event


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog once per process; `fmt` is auto, json or console."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
