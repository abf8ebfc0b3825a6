"""Exactly-once log ingest: inflate, decode, then COPY + one INSERT … ON CONFLICT DO NOTHING.

The batch id is claimed first (`ingest_batches`, primary key) in the same transaction as the
logs, so a retried batch touches nothing, and a concurrent copy of it waits on that row and
then sees it as a duplicate. Logs retried inside a different batch are dropped by the unique
(ts, id) index of agent_logs.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import typing
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import zstandard

from backend.attendance.capture import with_capture
from backend.auth import GatewayIdentity
from backend.errors import InvalidRequest, PayloadTooLarge, RateLimited, UnsupportedMediaType
from backend.partitions import LogPartitions, month_of
from protocol.agent import Log
from protocol.codec import ProtocolError, check_log_times
from protocol.uplink import IngestResponse, UplinkBatch

DEVICE_GROUP_PREFIX = "device:"
_STAGING_COLUMNS = ("agent_id", "agent_uid", "kind", "ts", "id", "data")
_json = msgspec.json.Encoder()
_KIND_OF: dict[type[Any], str] = {
    cls: str(cls.__struct_config__.tag) for cls in typing.get_args(Log)
}


def inflate(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo `Content-Encoding` (zstd, gzip), producing at most `limit` bytes or PayloadTooLarge."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    too_large = PayloadTooLarge(f"the decompressed body is larger than {limit} bytes")
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise InvalidRequest(f"the gzip body is corrupt: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise too_large
        if not inflater.eof:
            raise InvalidRequest("the gzip body is truncated")
        return out
    if encoding == "zstd":
        chunks: list[bytes] = []
        size = 0
        try:
            with zstandard.ZstdDecompressor().stream_reader(body) as reader:
                while chunk := reader.read(min(1 << 20, limit + 1 - size)):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise too_large
        except zstandard.ZstdError as exc:
            raise InvalidRequest(f"the zstd body is corrupt: {exc}") from None
        return b"".join(chunks)
    raise UnsupportedMediaType(
        f"Content-Encoding {encoding!r} is not supported; use zstd, gzip or none"
    )


class RateLimiter:
    """A token bucket per gateway, in this instance's memory."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def check(self, key: uuid.UUID) -> None:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise RateLimited(
                f"this gateway sends more than {self.rate:g} batches/s; retry later",
                retry_after_s=retry_after,
            )
        self._buckets[key] = (tokens - 1.0, now)


@dataclass(slots=True)
class IngestOutcome:
    response: IngestResponse
    log_count: int


async def _agent_ids(conn: Any, gateway: GatewayIdentity, uids: list[str]) -> dict[str, Any]:
    """Ids of the gateway's agents by uid, creating the ones not seen before."""
    if not uids:
        return {}
    rows = await conn.fetch(
        "SELECT agent_uid, id FROM agent_instances WHERE gateway_id = $1 AND agent_uid = ANY($2)",
        gateway.gateway_id,
        uids,
    )
    ids = {row["agent_uid"]: row["id"] for row in rows}
    missing = [uid for uid in uids if uid not in ids]
    if missing:
        await conn.execute(
            "INSERT INTO agent_instances (id, org_id, gateway_id, agent_uid)"
            " SELECT gen_random_uuid(), $1, $2, uid FROM unnest($3::text[]) AS uid"
            " ON CONFLICT (gateway_id, agent_uid) DO NOTHING",
            gateway.org_id,
            gateway.gateway_id,
            missing,
        )
        rows = await conn.fetch(
            "SELECT agent_uid, id FROM agent_instances"
            " WHERE gateway_id = $1 AND agent_uid = ANY($2)",
            gateway.gateway_id,
            missing,
        )
        ids.update({row["agent_uid"]: row["id"] for row in rows})
    return ids


def _months(batch: UplinkBatch) -> set[dt.date]:
    """The months the batch's logs fall in; InvalidRequest names a log whose ts is absurd
    (each month stored gets its own partition, so a broken clock is refused, not stored)."""
    months: set[dt.date] = set()
    for g, group in enumerate(batch.groups):
        try:
            check_log_times(group.logs, f"$.groups[{g}].logs")
        except ProtocolError as exc:
            raise InvalidRequest(str(exc)) from None
        months.update(month_of(log.ts) for log in group.logs)
    return months


async def store_batch(
    pool: Any,
    partitions: LogPartitions,
    gateway: GatewayIdentity,
    batch: UplinkBatch,
    *,
    attendance: bool = True,
) -> IngestOutcome:
    """Store a decoded batch exactly once; `batch.gateway_id` is ignored (the key says who)."""
    log_count = batch.log_count()
    months = _months(batch)
    await partitions.ensure(pool, months)
    try:
        return await _store(pool, gateway, batch, log_count, attendance)
    except asyncpg.exceptions.CheckViolationError:
        # "no partition found for row": another instance dropped a month we had cached.
        partitions.forget()
        await partitions.ensure(pool, months)
        return await _store(pool, gateway, batch, log_count, attendance)


async def _store(
    pool: Any, gateway: GatewayIdentity, batch: UplinkBatch, log_count: int, attendance: bool
) -> IngestOutcome:
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(
            "INSERT INTO ingest_batches (id, org_id, gateway_id, log_count, accepted)"
            " VALUES ($1, $2, $3, $4, 0) ON CONFLICT (id) DO NOTHING RETURNING id",
            batch.batch_id,
            gateway.org_id,
            gateway.gateway_id,
            log_count,
        )
        if claimed is None:
            return IngestOutcome(IngestResponse(accepted=0, duplicate=True), log_count)
        agent_uids = [
            group.agent_uid
            for group in batch.groups
            if not group.agent_uid.startswith(DEVICE_GROUP_PREFIX)
        ]
        agent_ids = await _agent_ids(conn, gateway, agent_uids)
        encode = _json.encode
        records = [
            (
                agent_ids.get(group.agent_uid),
                group.agent_uid,
                _KIND_OF[type(log)],
                log.ts,
                log.id,
                encode(log).decode(),
            )
            for group in batch.groups
            for log in group.logs
        ]
        await conn.copy_records_to_table(
            "ingest_staging", records=records, columns=_STAGING_COLUMNS
        )
        insert = (
            "INSERT INTO agent_logs"
            " (ts, id, org_id, gateway_id, agent_id, agent_uid, kind, received_at, data)"
            " SELECT ts, id, $1, $2, agent_id, agent_uid, kind, now(), data FROM ingest_staging"
            " ON CONFLICT (ts, id) DO NOTHING"
        )
        if attendance:
            # Only the rows this INSERT stored feed attendance, so retries never count twice.
            accepted = await conn.fetchval(with_capture(insert), gateway.org_id, gateway.gateway_id)
        else:
            status = await conn.execute(insert, gateway.org_id, gateway.gateway_id)
            accepted = int(status.rsplit(" ", 1)[1])
        await conn.execute(
            "UPDATE ingest_batches SET accepted = $2 WHERE id = $1", batch.batch_id, accepted
        )
    return IngestOutcome(
        IngestResponse(accepted=accepted, duplicates=log_count - accepted), log_count
    )
