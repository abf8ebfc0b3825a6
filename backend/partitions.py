"""Monthly partitions of agent_logs: created ahead, on demand, and dropped once emptied."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from backend.errors import Unavailable
from protocol.storable import month_of

_PARTITION_NAME = re.compile(r"^agent_logs_y(\d{4})m(\d{2})$")
_CREATE_LOCK_ID = 0x7D_70_61_72
_LOCK_TIMEOUT_MS = 5000


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(month: dt.date) -> str:
    return f"agent_logs_y{month.year:04d}m{month.month:02d}"


class LogPartitions:
    """Knows which months have a partition, so the ingest path checks a set, not the catalog."""

    def __init__(self) -> None:
        self._known: set[dt.date] = set()

    async def refresh(self, conn: Any) -> None:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'agent_logs'::regclass"
        )
        known = set()
        for row in rows:
            match = _PARTITION_NAME.match(row["relname"])
            if match:
                known.add(dt.date(int(match[1]), int(match[2]), 1))
        self._known = known

    def forget(self) -> None:
        """Drop the cache, e.g. after another instance dropped a partition."""
        self._known.clear()

    async def ensure(self, pool: Any, months: Iterable[dt.date]) -> None:
        """Create the missing months' partitions, each in a short transaction of its own.

        Never inside an ingest transaction: `CREATE TABLE … PARTITION OF` locks agent_logs
        exclusively, so it is held for one statement, and gives up (503, retry) rather than
        queue behind a long query while every other reader queues behind it."""
        for month in sorted(set(months) - self._known):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT_MS}ms'")
                    # Two instances creating the same month at once would race in the catalog.
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK_ID)
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {partition_name(month)}"
                        " PARTITION OF agent_logs"
                        f" FOR VALUES FROM ('{month.isoformat()} 00:00:00+00')"
                        f" TO ('{next_month(month).isoformat()} 00:00:00+00')"
                    )
            except asyncpg.exceptions.LockNotAvailableError:
                raise Unavailable(
                    f"the partition for {month:%Y-%m} is being created behind a long query;"
                    " retry shortly"
                ) from None
            self._known.add(month)

    async def ensure_window(
        self, pool: Any, now: dt.datetime, retention: dt.timedelta, months_ahead: int = 2
    ) -> None:
        """Every month retention keeps, the current one and the next `months_ahead`: every
        month a log can be accepted for (protocol.storable) exists before it arrives."""
        month = month_of(now - retention)
        last = month_of(now)
        for _ in range(months_ahead):
            last = next_month(last)
        wanted = [month]
        while month < last:
            month = next_month(month)
            wanted.append(month)
        async with pool.acquire() as conn:
            await self.refresh(conn)
        await self.ensure(pool, wanted)

    @property
    def months(self) -> list[dt.date]:
        """The months with a partition, as of the last refresh."""
        return sorted(self._known)

    async def drop_if_empty(self, pool: Any, month: dt.date) -> bool:
        """Drop the month's partition if it holds no row; the check and the drop happen under
        one exclusive lock, so a log landing meanwhile keeps it."""
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT_MS}ms'")
                    table = partition_name(month)
                    await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                    if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                        return False
                    await conn.execute(f"DROP TABLE {table}")
            except asyncpg.exceptions.LockNotAvailableError:
                return False
            except asyncpg.exceptions.UndefinedTableError:
                pass
            await self.refresh(conn)
        return True
