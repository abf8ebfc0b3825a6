"""Status reports kept to one stored snapshot per heartbeat interval per gateway.

A gateway reports its figures once per heartbeat; one that sends faster (a bug, or a stolen
key) must not turn `gateway_status_snapshots` into a firehose. Reports arriving within the
interval since the last stored one are merged: the latest is kept and stored once the
interval has passed, so the snapshot history keeps its pace and the newest figures still
arrive, while a flood costs one row per interval.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from backend.logging import get_logger
from protocol.control import Status

log = get_logger("backend.control")


class StatusCoalescer:
    def __init__(
        self,
        interval_s: float,
        store: Callable[[Status], Awaitable[None]],
        on_coalesced: Callable[[], None] = lambda: None,
    ) -> None:
        self._interval_s = interval_s
        self._store = store
        self._on_coalesced = on_coalesced
        self._stored_at = -math.inf
        self._pending: Status | None = None
        self._flush: asyncio.Task[None] | None = None

    async def offer(self, status: Status) -> None:
        """Store `status` now if the interval has passed, else keep it for the next slot."""
        if self._flush is None and time.monotonic() - self._stored_at >= self._interval_s:
            self._stored_at = time.monotonic()
            await self._store(status)
            return
        if self._pending is not None:
            self._on_coalesced()
        self._pending = status
        if self._flush is None:
            self._flush = asyncio.create_task(self._store_when_due())

    async def _store_when_due(self) -> None:
        try:
            while self._pending is not None:
                due = self._stored_at + self._interval_s - time.monotonic()
                await asyncio.sleep(max(0.0, due))
                status, self._pending = self._pending, None
                self._stored_at = time.monotonic()
                await self._store(status)
        except Exception as exc:
            log.warning("status report not stored", error=repr(exc))
        finally:
            self._flush = None

    async def aclose(self) -> None:
        """Stop; a report still waiting for its slot is dropped (the session is over)."""
        flush, self._flush = self._flush, None
        if flush is not None:
            flush.cancel()
            await asyncio.gather(flush, return_exceptions=True)
