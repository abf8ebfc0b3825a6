"""What a storable log is, decided once for both sides.

The gateway checks every log an agent posts (and every event a terminal gives it) with
`make_storable` before acknowledging it; the backend checks every uplink batch with the same
function and a window at least as wide. So what the gateway acknowledges, the backend stores.

- `ts` within a window: not older than `past`, not later than `ahead` (a broken clock, not
  activity). Each month stored is a partition of agent_logs; the window is what keeps the
  number of months (and so of partitions and of months per request) small.
- At most `max_months` distinct months per request.
- NUL (U+0000), which PostgreSQL cannot store, is replaced with U+FFFD in the text a log
  carries: window titles, URLs, process names and terminal fields are copied from other
  programs, so refusing them would throw away a whole batch for a character nobody chose.
  Text an agent chooses (its uid, hostname) is refused with 400 instead (protocol.agent).
"""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from protocol.agent import Log
from protocol.codec import ProtocolError

REPLACEMENT = "\ufffd"
# How old a log an agent may post, and how far ahead of the gateway's clock.
MAX_LOG_AGE = dt.timedelta(days=30)
MAX_CLOCK_AHEAD = dt.timedelta(days=1)
# An agent's post spans at most this many months (a backlog posted across a month's end).
MAX_MONTHS_PER_REQUEST = 3


@dataclass(frozen=True, slots=True)
class LogWindow:
    """The `ts` a side accepts: from `now - past` to `now + ahead`."""

    past: dt.timedelta
    ahead: dt.timedelta
    max_months: int | None = None


AGENT_WINDOW = LogWindow(past=MAX_LOG_AGE, ahead=MAX_CLOCK_AHEAD, max_months=MAX_MONTHS_PER_REQUEST)
# A log may wait in a gateway's buffer, and the two clocks may differ, before it reaches the
# backend: one more day ahead covers the clocks; the backend's past edge is its retention.
BACKEND_CLOCK_SLACK = dt.timedelta(days=1)


def backend_window(retention: dt.timedelta) -> LogWindow:
    """The backend's window: anything retention keeps, up to a day past the agents' edge."""
    return LogWindow(past=max(retention, MAX_LOG_AGE), ahead=MAX_CLOCK_AHEAD + BACKEND_CLOCK_SLACK)


def month_of(ts: dt.datetime) -> dt.date:
    utc = ts.astimezone(dt.UTC)
    return dt.date(utc.year, utc.month, 1)


def _text_fields(cls: type[Any]) -> tuple[str, ...]:
    """The fields of a log kind that can hold text (`str` or `str | None`)."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    names = []
    for field in info.fields:
        kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else ()
        if isinstance(field.type, msgspec.inspect.StrType) or any(
            isinstance(kind, msgspec.inspect.StrType) for kind in kinds
        ):
            names.append(field.name)
    return tuple(names)


_TEXT_FIELDS: dict[type[Any], tuple[str, ...]] = {
    cls: _text_fields(cls) for cls in typing.get_args(Log)
}


def make_storable(
    logs: Sequence[Log], path: str, now: dt.datetime, window: LogWindow
) -> set[dt.date]:
    """Check `logs` against `window` and replace NUL in their text, in place.

    Returns the months the logs fall in; raises ProtocolError naming the first log (e.g.
    `$.logs[3].ts`) that cannot be stored."""
    earliest = now - window.past
    latest = now + window.ahead
    months: set[dt.date] = set()
    for index, log in enumerate(logs):
        ts = log.ts
        if not earliest <= ts <= latest:
            raise ProtocolError(
                f"{path}[{index}].ts",
                f"{ts.isoformat()} is outside {_iso(earliest)} .. {_iso(latest)}"
                " (older logs are past retention; later ones come from a wrong clock)",
            )
        months.add(month_of(ts))
        for name in _TEXT_FIELDS[type(log)]:
            value = getattr(log, name)
            if value is not None and "\x00" in value:
                setattr(log, name, value.replace("\x00", REPLACEMENT))
    return months


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def check_months(months: set[dt.date], path: str, window: LogWindow) -> None:
    """ProtocolError when a request spans more distinct months than `window` allows."""
    if window.max_months is not None and len(months) > window.max_months:
        raise ProtocolError(
            path,
            f"the logs span {len(months)} months; post at most {window.max_months}"
            " months per request",
        )


def check_agent_logs(logs: Sequence[Log], now: dt.datetime) -> None:
    """The gateway's whole rule for the logs of `POST /v1/logs` (and of terminals): what
    passes it, the backend stores (its window is wider, see `backend_window`)."""
    months = make_storable(logs, "$.logs", now, AGENT_WINDOW)
    check_months(months, "$.logs", AGENT_WINDOW)
