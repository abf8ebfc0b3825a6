"""Uploads buffered logs to the backend, oldest first, never losing or duplicating them.

A batch is claimed from the buffer (its id stored with its rows), sent with that id as the
`Idempotency-Key` until the backend answers, and deleted only after a 2xx. Connection
errors, timeouts, 5xx, 408 and 429 are retried forever with full-jitter exponential backoff
(honouring Retry-After); 401/403 too, because a wrong key is the operator's to fix, not the
batch's fault. Any other 4xx means the batch itself is unacceptable: it goes to the
dead-letter table so the queue keeps moving. httpx errors are translated here, nowhere else.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import msgspec
import structlog
import trio
import zstandard

from gateway.buffer import Buffer
from gateway.buffer_store import Claim, unpack
from gateway.config import GatewayConfig
from gateway.errors import StorageError
from gateway.metrics import Metrics
from protocol import codec

log = structlog.get_logger("gateway.uplink")

INGEST_PATH = "/v2/ingest/logs"
# A backend asking for a longer pause than this is more likely wrong than right.
MAX_RETRY_AFTER_S = 300.0

Outcome = Literal["ok", "retry", "dead_letter"]


# The same wire shape as protocol.uplink.UplinkBatch, with each group's logs spliced in as
# the msgpack bytes already stored in the buffer: no decoding and re-encoding per log.
class _RawAgentLogs(msgspec.Struct, kw_only=True):
    agent_uid: str
    logs: msgspec.Raw
    agent_id: str | None = None


class _RawUplinkBatch(msgspec.Struct, kw_only=True):
    batch_id: uuid.UUID
    gateway_id: str
    created_at: dt.datetime
    groups: list[_RawAgentLogs]


def encode_batch(
    claim: Claim, gateway_id: str, agent_id_of: Callable[[str], str | None] = lambda uid: None
) -> bytes:
    """The msgpack body of an UplinkBatch for `claim` (not yet compressed); each group
    carries the gateway's id for its agent (`agent_id_of(agent_uid)`)."""
    batch = _RawUplinkBatch(
        batch_id=claim.batch_id,
        gateway_id=gateway_id,
        created_at=claim.created_at,
        groups=[
            _RawAgentLogs(
                agent_uid=uid, logs=msgspec.Raw(unpack(packed)), agent_id=agent_id_of(uid)
            )
            for uid, packed in claim.groups
        ],
    )
    return codec.msgpack_encoder.encode(batch)


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500 and status not in (401, 403, 408, 429):
        return "dead_letter"
    return "retry"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 62)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


@dataclass
class UplinkHealth:
    backend_connected: bool = False
    last_upload_at: dt.datetime | None = None
    error_streak: int = 0


class Uplink:
    """Start with `await nursery.start(uplink.run)`."""

    def __init__(
        self,
        config: GatewayConfig,
        buffer: Buffer,
        metrics: Metrics,
        gateway_id: Callable[[], str] = lambda: "",
        agent_id_of: Callable[[str], str | None] = lambda uid: None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._metrics = metrics
        self._gateway_id = gateway_id
        self._agent_id_of = agent_id_of
        self._transport = transport
        self._rng = rng or random.Random()
        self._wake = trio.Event()
        self.health = UplinkHealth()
        # Logs the backend acknowledged since start (the flush command watches it).
        self.uploaded_total = 0

    @property
    def enabled(self) -> bool:
        return bool(self._config.backend_url)

    def wake(self) -> None:
        """Retry now: cuts short every backoff pause (the `flush` command)."""
        self._wake.set()
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.enabled:
            log.warning("uplink_disabled", reason="no backend_url; logs stay buffered")
            task_status.started()
            await trio.sleep_forever()
        async with self._client() as client, trio.open_nursery() as nursery:
            for _ in range(self._config.upload_concurrency):
                nursery.start_soon(self._work, client)
            task_status.started()

    def _client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self._config.ca_bundle:
            verify = ssl.create_default_context(cafile=self._config.ca_bundle)
        return httpx.AsyncClient(
            base_url=self._config.backend_url.rstrip("/"),
            headers={"X-API-Key": self._config.api_key},
            timeout=self._config.upload_timeout_s,
            verify=verify,
            transport=self._transport,
        )

    async def _work(self, client: httpx.AsyncClient) -> None:
        compressor = zstandard.ZstdCompressor(level=3)
        while True:
            appended = self._buffer.appended_event()
            try:
                claim = await self._buffer.claim(self._config.upload_max_logs)
                if claim is None:
                    await appended.wait()
                    continue
                # Returns once the batch is acked, dead-lettered or dropped; if cancelled, the
                # batch stays buffered under its id and the next start sends it again.
                await self._deliver(client, compressor, claim)
            except StorageError as exc:
                # The buffer failed under us (disk full?). A batch whose ack did not commit
                # is handed out again later under the same id; the backend dedupes it.
                log.error("upload_storage_error", error=str(exc))
                await trio.sleep(self._config.upload_backoff_cap_s)

    async def _deliver(
        self, client: httpx.AsyncClient, compressor: zstandard.ZstdCompressor, claim: Claim
    ) -> None:
        raw = encode_batch(claim, self._gateway_id(), self._agent_id_of)
        body = compressor.compress(raw)
        headers = {
            "Content-Type": codec.MSGPACK,
            "Content-Encoding": "zstd",
            "Idempotency-Key": str(claim.batch_id),
        }
        attempt = 0
        while self._buffer.still_claimed(claim.batch_id):
            attempt += 1
            started = trio.current_time()
            status, reason, retry_after, detail = await self._post(client, body, headers)
            duration = trio.current_time() - started
            self._metrics.upload_seconds.observe(duration)
            outcome = classify(status) if status else "retry"
            fields = dict(
                batch_id=str(claim.batch_id),
                logs=claim.n_logs,
                bytes=len(body),
                raw_bytes=len(raw),
                duration_ms=round(duration * 1000, 1),
                attempt=attempt,
                status=status or None,
            )
            if outcome == "ok":
                uploaded = await self._buffer.ack(claim.batch_id)
                self.uploaded_total += uploaded
                self._metrics.logs_uploaded.inc(uploaded)
                self._metrics.upload_batches.labels("ok").inc()
                self.health = UplinkHealth(True, dt.datetime.now(dt.UTC), 0)
                log.info("upload", **fields)
                return
            if outcome == "dead_letter":
                moved = await self._buffer.dead_letter(claim.batch_id, status, detail)
                self._metrics.upload_batches.labels("dead_letter").inc()
                self.health.backend_connected = True
                log.error("upload_dead_lettered", detail=detail, moved_logs=moved, **fields)
                return
            self.health.error_streak += 1
            self.health.backend_connected = 400 <= status < 500
            self._metrics.upload_retries.labels(reason).inc()
            delay = max(
                backoff_delay(
                    attempt - 1,
                    self._config.upload_backoff_base_s,
                    self._config.upload_backoff_cap_s,
                    self._rng,
                ),
                retry_after or 0.0,
            )
            log.warning(
                "upload_retry", reason=reason, detail=detail, retry_in_s=round(delay, 2), **fields
            )
            with trio.move_on_after(delay):
                await self._wake.wait()

    async def _post(
        self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, float | None, str]:
        """(status or 0, retry reason, Retry-After seconds, detail) of one attempt."""
        try:
            response = await client.post(INGEST_PATH, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return 0, "timeout", None, f"no answer in time ({type(exc).__name__})"
        except httpx.TransportError as exc:
            return 0, "connection", None, f"{type(exc).__name__}: {exc}"
        status = response.status_code
        if 200 <= status < 300:
            return status, "", None, ""
        reason = "auth" if status in (401, 403) else f"http_{status}"
        if status in (401, 403):
            detail = "the backend refused the gateway API key (TD_GATEWAY_API_KEY)"
        else:
            detail = response.text[:500]
        return status, reason, parse_retry_after(response.headers.get("Retry-After")), detail
