"""Following a terminal's event stream: reconnect with backoff, give up where unsupported.

The stream only makes events arrive sooner. The event search (DeviceManager._pull_events)
stays the source of truth: it runs on every (re)connect to backfill what happened while the
stream was down, and whenever a streamed event's serialNo is not the next one expected.
Both produce the same ids (device_event_id), so an event seen both ways is one log.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import structlog
import trio

from gateway.devices.base import AccessEvent, DeviceError, DeviceErrorKind

log = structlog.get_logger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


@runtime_checkable
class AlertSource(Protocol):
    """An adapter whose terminal pushes events (Hikvision's alertStream)."""

    async def watch_alerts(
        self, on_alert: Callable[[AccessEvent | None], Awaitable[None]]
    ) -> None: ...


class StreamSink(Protocol):
    async def wait_ready(self, device_id: str) -> None:
        """Until the device answered the poller with these credentials: a stream must not
        be a second source of bad logins towards the terminal's lock-out."""

    async def streamed(self, device_id: str, event: AccessEvent) -> None:
        """Take one streamed event (append it, or have the search fill a gap)."""

    def stream_up(self, device_id: str) -> None:
        """Connected: backfill what the stream missed."""

    def stream_down(self, device_id: str, error: DeviceError | None) -> float:
        """The stream ended; returns how long to stay away at least (a login pause)."""


def backoff_s(failures: int, rng: random.Random) -> float:
    """Full jitter, so terminals behind one gateway do not reconnect in step."""
    return rng.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(failures, 30)))


async def watch(
    device_id: str, source: AlertSource, sink: StreamSink, rng: random.Random | None = None
) -> None:
    """Follow `source`'s stream until cancelled; returns when the terminal has none."""
    rng = rng or random.Random()
    failures = 0
    while True:
        await sink.wait_ready(device_id)
        connected = False

        async def on_alert(event: AccessEvent | None) -> None:
            nonlocal connected, failures
            if not connected:
                connected, failures = True, 0
                log.info("device.stream_connected", device_id=device_id)
                sink.stream_up(device_id)
            if event is not None:
                await sink.streamed(device_id, event)

        error: DeviceError | None = None
        try:
            await source.watch_alerts(on_alert)
        except DeviceError as exc:
            error = exc
        pause = sink.stream_down(device_id, error)
        if error is not None and error.kind is DeviceErrorKind.NOT_SUPPORTED:
            log.info("device.stream_unsupported", device_id=device_id, error=str(error),
                     fallback="polling")  # fmt: skip
            return
        failures += 1
        delay = max(pause, backoff_s(failures, rng))
        log.warning("device.stream_lost", device_id=device_id,
                    error=str(error) if error else "ended by the device",
                    retry_in_s=None if math.isinf(delay) else round(delay, 1))  # fmt: skip
        if math.isinf(delay):
            # Paused for bad credentials: a config change restarts this watcher.
            await trio.sleep_forever()
        await trio.sleep(delay)
