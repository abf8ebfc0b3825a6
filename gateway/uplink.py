"""Uploads buffered logs to the backend, oldest first, never losing or duplicating them.

A batch is claimed from the buffer (its id stored with its rows), sent with that id as the
`Idempotency-Key` until the backend answers, and deleted only after a 2xx. Connection
errors, timeouts, 5xx, 408 and 429 are retried forever with full-jitter exponential backoff
(honouring Retry-After); 401/403 too, because a wrong key is the operator's to fix, not the
batch's fault.

Any other 4xx (413 too large, 400 invalid, ...) says something in the batch is unacceptable,
not which log: the batch is bisected. Each half is sent as its own batch, under an id
derived from the parent's and the half's range (`part_id`), so a resend after a restart is
still deduplicated by id; refused halves are split again, down to single logs. A single log
still refused becomes a dead letter with the backend's reason; everything else is stored.
Only then is the parent batch removed from the buffer, in the same commit that keeps its
dead letters. httpx errors are translated here, nowhere else.

Each batch is one `upload` span, linked to the agent posts it carries; every POST sends that
span's context in a `traceparent` header (gateway/tracing.py).
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
from opentelemetry.trace import SpanKind

from gateway import tracing
from gateway.buffer import Buffer
from gateway.buffer_store import Claim, DeadLog
from gateway.client_identity import ClientIdentity, IdentityTransport
from gateway.config import GatewayConfig
from gateway.errors import StorageError
from gateway.metrics import Metrics
from gateway.upload_body import encode_batch, encode_part, entries_of, part_id
from protocol import codec
from protocol.batch_signature import SERVER_TIME_HEADER

log = structlog.get_logger("gateway.uplink")

INGEST_PATH = "/v2/ingest/logs"
# A backend asking for a longer pause than this is more likely wrong than right.
MAX_RETRY_AFTER_S = 300.0
# An idle uploader looks for rows again this often even without an append in this process:
# `td-gateway dead-letters replay` queues rows from another process.
IDLE_RECHECK_S = 5.0

Outcome = Literal["ok", "retry", "refused"]
# Each refused log gets an error line up to this many per batch; a summary line has the rest.
MAX_LOGGED_DEAD_LETTERS = 20


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500 and status not in (401, 403, 408, 429):
        return "refused"
    return "retry"


@dataclass(frozen=True)
class _Answer:
    status: int
    detail: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


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
        identity: ClientIdentity | None = None,
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._metrics = metrics
        self._gateway_id = gateway_id
        self._agent_id_of = agent_id_of
        self._transport = transport
        # Presents the client certificate and signs each attempt (gateway.client_identity).
        self._identity = identity
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
        transport = self._transport
        if transport is None and self._identity is not None:
            transport = IdentityTransport(self._identity)
        return httpx.AsyncClient(
            base_url=self._config.backend_url.rstrip("/"),
            headers={"X-API-Key": self._config.api_key},
            timeout=self._config.upload_timeout_s,
            verify=verify,
            transport=transport,
        )

    async def _work(self, client: httpx.AsyncClient) -> None:
        compressor = zstandard.ZstdCompressor(level=3)
        while True:
            appended = self._buffer.appended_event()
            try:
                claim = await self._buffer.claim(self._config.upload_max_logs)
                if claim is None:
                    with trio.move_on_after(IDLE_RECHECK_S):
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
        # A batch holds logs of many posts: its own trace, linked to each post's.
        links, unlinked = tracing.links_to(claim.trace_contexts)
        with tracing.span(
            "upload",
            context=tracing.NEW_TRACE,
            kind=SpanKind.CLIENT,
            links=links,
            attributes={
                "td.batch_id": str(claim.batch_id),
                "td.logs": claim.n_logs,
                "td.posts_unlinked": unlinked,
            },
        ):
            await self._deliver_claim(client, compressor, claim)

    async def _deliver_claim(
        self, client: httpx.AsyncClient, compressor: zstandard.ZstdCompressor, claim: Claim
    ) -> None:
        raw = encode_batch(claim, self._gateway_id(), self._agent_id_of)
        answer = await self._send(client, compressor, claim, claim.batch_id, raw, claim.n_logs)
        if answer is None:
            return
        if answer.ok:
            uploaded = await self._buffer.ack(claim.batch_id)
            self._uploaded(uploaded)
            return
        dead = await self._bisect(client, compressor, claim, answer)
        if dead is None:
            return
        settled = await self._buffer.settle(claim.batch_id, dead)
        self._uploaded(settled.uploaded)
        self._metrics.upload_batches.labels("split").inc()
        for item in dead[:MAX_LOGGED_DEAD_LETTERS]:
            log.error(
                "upload_dead_lettered",
                batch_id=str(claim.batch_id),
                agent_uid=item.agent_uid,
                status=item.status,
                detail=item.detail,
            )
        if settled.dead_letter_dropped:
            log.error(
                "dead_letters_not_kept",
                batch_id=str(claim.batch_id),
                logs=settled.dead_letter_dropped,
                reason="the dead-letter space is full (TD_DEAD_LETTER_MAX_BYTES)",
            )
        log.warning(
            "upload_split",
            batch_id=str(claim.batch_id),
            logs=claim.n_logs,
            stored=settled.uploaded,
            dead_lettered=settled.dead_lettered,
        )

    def _uploaded(self, logs: int) -> None:
        self.uploaded_total += logs
        self._metrics.logs_uploaded.inc(logs)
        self._metrics.upload_batches.labels("ok").inc()
        self.health = UplinkHealth(True, dt.datetime.now(dt.UTC), 0)

    async def _bisect(
        self,
        client: httpx.AsyncClient,
        compressor: zstandard.ZstdCompressor,
        claim: Claim,
        refusal: _Answer,
    ) -> list[DeadLog] | None:
        """Send halves of a refused batch until only single refused logs remain; returns
        them (None if drop_oldest removed the batch meanwhile)."""
        entries = entries_of(claim)
        gateway_id = self._gateway_id()
        dead: list[DeadLog] = []
        refused = [(0, len(entries), refusal)]  # ranges the backend refused, in log order
        while refused:
            start, stop, answer = refused.pop(0)
            if stop - start == 1:
                entry = entries[start]
                packed = codec.msgpack_encoder.encode([entry.log])
                dead.append(
                    DeadLog(entry.group, entry.agent_uid, packed, answer.status, answer.detail)
                )
                continue
            middle = (start + stop) // 2
            still_refused = []
            for low, high in ((start, middle), (middle, stop)):
                raw = encode_part(claim, gateway_id, entries, low, high, self._agent_id_of)
                part = part_id(claim.batch_id, low, high)
                result = await self._send(client, compressor, claim, part, raw, high - low)
                if result is None:
                    return None
                if not result.ok:
                    still_refused.append((low, high, result))
            refused[:0] = still_refused
        return dead

    async def _send(
        self,
        client: httpx.AsyncClient,
        compressor: zstandard.ZstdCompressor,
        claim: Claim,
        batch_id: uuid.UUID,
        raw: bytes,
        n_logs: int,
    ) -> _Answer | None:
        """POST one body until the backend takes or refuses it; None once the claim is gone."""
        body = compressor.compress(raw)
        headers = {
            "Content-Type": codec.MSGPACK,
            "Content-Encoding": "zstd",
            "Idempotency-Key": str(batch_id),
        }
        tracing.inject(headers)
        attempt = 0
        while self._buffer.still_claimed(claim.batch_id):
            attempt += 1
            started = trio.current_time()
            signed = headers
            if self._identity is not None:
                signed = {
                    **headers,
                    **self._identity.signature_headers(str(batch_id), body, headers),
                }
            status, reason, retry_after, detail = await self._post(client, body, signed)
            if reason == "signature_clock":
                # Signed with the backend's time now: again at once, not after a backoff.
                log.warning("upload_resigned", batch_id=str(batch_id), detail=detail)
                continue
            duration = trio.current_time() - started
            self._metrics.upload_seconds.observe(duration)
            outcome = classify(status) if status else "retry"
            fields = dict(
                batch_id=str(batch_id),
                logs=n_logs,
                bytes=len(body),
                raw_bytes=len(raw),
                duration_ms=round(duration * 1000, 1),
                attempt=attempt,
                status=status or None,
            )
            if outcome == "ok":
                log.info("upload", **fields)
                return _Answer(status, "")
            if outcome == "refused":
                self.health.backend_connected = True
                self._metrics.upload_batches.labels("refused").inc()
                log.warning("upload_refused", detail=detail, **fields)
                return _Answer(status, detail)
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
        return None

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
        detail = backend_detail(response.content)
        if status == 401 and self._identity is not None:
            # A refusal for the signature's time carries the backend's clock.
            server_time = response.headers.get(SERVER_TIME_HEADER)
            if server_time is not None and self._identity.learn_backend_time(server_time):
                return status, "signature_clock", None, detail
        return status, reason, parse_retry_after(response.headers.get("Retry-After")), detail


class _ErrorBody(msgspec.Struct):
    error: str = ""
    detail: str = ""


def backend_detail(body: bytes) -> str:
    """The backend's `detail` sentence from an error body, else the body's start as text."""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorBody)
    except msgspec.DecodeError:
        parsed = _ErrorBody()
    text = parsed.detail or body.decode("utf-8", "replace")
    return text[:500]
