"""Exactly-once log ingest: inflate, decode, then COPY + one INSERT … ON CONFLICT DO NOTHING.

The batch id is claimed first (`ingest_batches`, keyed by (gateway_id, id)) in the same
transaction as the logs, so a retried batch touches nothing, and a concurrent copy of it waits
on that row and then sees it as a duplicate. Logs retried inside a different batch are dropped
by the unique (org_id, ts, id) index of agent_logs. Both keys name the sender, so one
organisation's gateway can never suppress another's logs by sending their ids first.
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

from backend import tracing
from backend.attendance.capture import with_capture
from backend.auth import GatewayIdentity
from backend.control.state import adopt_agent_ids, proposed_agent_ids
from backend.errors import InvalidRequest, PayloadTooLarge, RateLimited, UnsupportedMediaType
from backend.partitions import LogPartitions
from protocol.agent import Log
from protocol.codec import ProtocolError
from protocol.storable import LogWindow, make_storable
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


async def _agent_ids(
    conn: Any, gateway: GatewayIdentity, proposed: dict[str, uuid.UUID | None]
) -> dict[str, Any]:
    """Ids of the gateway's agents by uid, creating the ones not seen before.

    `proposed` holds the gateway's own id for each uid: a new row takes it when no row
    anywhere has it, so the id an agent got at registration is the one the API shows. An
    agent an operator deleted is not brought back (its logs keep the gateway's id)."""
    if not proposed:
        return {}
    uids = list(proposed)
    rows = await conn.fetch(
        "SELECT agent_uid, id FROM agent_instances WHERE gateway_id = $1 AND agent_uid = ANY($2)",
        gateway.gateway_id,
        uids,
    )
    ids = {row["agent_uid"]: row["id"] for row in rows}
    missing = [uid for uid in uids if uid not in ids]
    if missing:
        # Newest first: logs that come without the gateway's id (buffered before it forgot
        # the agent, or from an older gateway) belong to the agent deleted last.
        deleted = await conn.fetch(
            "SELECT agent_uid, agent_id FROM agent_deletions"
            " WHERE gateway_id = $1 AND agent_uid = ANY($2) ORDER BY deleted_at DESC",
            gateway.gateway_id,
            missing,
        )
        for row in deleted:
            uid, gone = row["agent_uid"], row["agent_id"]
            if proposed[uid] == gone or (proposed[uid] is None and uid not in ids):
                ids[uid] = gone
        missing = [uid for uid in missing if uid not in ids]
    if missing:
        await adopt_agent_ids(
            conn, gateway.org_id, gateway.gateway_id, {uid: proposed[uid] for uid in missing}
        )
        await conn.execute(
            "INSERT INTO agent_instances (id, org_id, gateway_id, agent_uid, gateway_agent_id)"
            " SELECT gen_random_uuid(), $1, $2, a.uid, a.proposed"
            " FROM unnest($3::text[], $4::uuid[]) AS a(uid, proposed)"
            " ON CONFLICT (gateway_id, agent_uid) DO NOTHING",
            gateway.org_id,
            gateway.gateway_id,
            missing,
            [proposed[uid] for uid in missing],
        )
        rows = await conn.fetch(
            "SELECT agent_uid, id FROM agent_instances"
            " WHERE gateway_id = $1 AND agent_uid = ANY($2)",
            gateway.gateway_id,
            missing,
        )
        ids.update({row["agent_uid"]: row["id"] for row in rows})
    return ids


def _storable_months(batch: UplinkBatch, window: LogWindow) -> set[dt.date]:
    """The months the batch's logs fall in, after protocol.storable made each log storable;
    InvalidRequest names a log outside `window` (a partition per month: a broken clock is
    refused, not given one)."""
    months: set[dt.date] = set()
    now = dt.datetime.now(dt.UTC)
    for g, group in enumerate(batch.groups):
        try:
            months |= make_storable(group.logs, f"$.groups[{g}].logs", now, window)
        except ProtocolError as exc:
            raise InvalidRequest(str(exc)) from None
    return months


async def store_batch(
    pool: Any,
    partitions: LogPartitions,
    gateway: GatewayIdentity,
    batch: UplinkBatch,
    window: LogWindow,
    *,
    attendance: bool = True,
) -> IngestOutcome:
    """Store a decoded batch exactly once; `batch.gateway_id` is ignored (the key says who)."""
    log_count = batch.log_count()
    months = _storable_months(batch, window)
    await partitions.ensure(pool, months)
    with tracing.span(
        "db.write", attributes={"db.system": "postgresql", "td.logs": log_count}
    ) as span:
        try:
            outcome = await _store(pool, gateway, batch, log_count, attendance)
        except asyncpg.exceptions.CheckViolationError:
            # "no partition found for row": another instance dropped a month we had cached.
            partitions.forget()
            await partitions.ensure(pool, months)
            outcome = await _store(pool, gateway, batch, log_count, attendance)
        span.set_attribute("td.accepted", outcome.response.accepted)
        return outcome


async def _store(
    pool: Any, gateway: GatewayIdentity, batch: UplinkBatch, log_count: int, attendance: bool
) -> IngestOutcome:
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(
            "INSERT INTO ingest_batches (id, org_id, gateway_id, log_count, accepted)"
            " VALUES ($1, $2, $3, $4, 0) ON CONFLICT (gateway_id, id) DO NOTHING RETURNING id",
            batch.batch_id,
            gateway.org_id,
            gateway.gateway_id,
            log_count,
        )
        if claimed is None:
            return IngestOutcome(IngestResponse(accepted=0, duplicate=True), log_count)
        proposed = proposed_agent_ids(
            [
                (group.agent_uid, group.agent_id)
                for group in batch.groups
                if not group.agent_uid.startswith(DEVICE_GROUP_PREFIX)
            ]
        )
        agent_ids = await _agent_ids(conn, gateway, proposed)
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
            " ON CONFLICT (org_id, ts, id) DO NOTHING"
        )
        if attendance:
            # Only the rows this INSERT stored feed attendance, so retries never count twice.
            accepted = await conn.fetchval(with_capture(insert), gateway.org_id, gateway.gateway_id)
        else:
            status = await conn.execute(insert, gateway.org_id, gateway.gateway_id)
            accepted = int(status.rsplit(" ", 1)[1])
        await conn.execute(
            "UPDATE ingest_batches SET accepted = $3 WHERE gateway_id = $1 AND id = $2",
            gateway.gateway_id,
            batch.batch_id,
            accepted,
        )
    return IngestOutcome(
        IngestResponse(accepted=accepted, duplicates=log_count - accepted), log_count
    )
