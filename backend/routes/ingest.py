"""`POST /v2/ingest/logs`: the gateway's batches (X-API-Key), JSON or msgpack, maybe compressed."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Annotated, Any

from litestar import MediaType, Request, Response, post
from litestar.params import HeaderParameter

from backend.errors import InvalidRequest
from backend.ingest import inflate, store_batch
from backend.logging import get_logger
from backend.pki.identify import identify_gateway
from backend.pki.signatures import SignatureRefused, verify_batch
from backend.routes.common import error_responses, services_of
from backend.routes.ingest_schema import IngestOperation
from protocol import codec
from protocol.batch_signature import SERVER_TIME_HEADER
from protocol.storable import backend_window
from protocol.uplink import IngestResponse

log = get_logger("backend.ingest")


@post(
    "/v2/ingest/logs",
    status_code=200,
    tags=["ingest"],
    operation_class=IngestOperation,
    responses=error_responses(400, 401, 413, 415, 429, 503),
    # The body is read and decoded by hand: msgspec's prebuilt decoder is twice as fast as
    # letting the framework build the struct.
    description=(
        "Body: protocol.uplink.UplinkBatch as JSON or msgpack (Content-Type"
        " application/msgpack), optionally Content-Encoding zstd or gzip. The batch id"
        " (Idempotency-Key header, else batch_id) is stored with the logs: a retried batch"
        " answers {accepted: 0, duplicate: true}. A gateway holding a client certificate"
        " signs each batch (X-TD-Signature, X-TD-Signature-Timestamp, X-TD-Certificate-Serial;"
        " docs/gateway-mtls.md); an unsigned, altered or stale one is 401."
    ),
)
async def ingest_logs(
    request: Request[Any, Any, Any],
    # Read by identify_gateway from the headers; declared for the OpenAPI document.
    x_api_key: Annotated[str | None, HeaderParameter(name="X-API-Key")] = None,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[IngestResponse]:
    started = time.perf_counter()
    services = services_of(request)
    async with services.connection() as conn:
        gateway = await identify_gateway(
            conn,
            services.authority,
            services.config.trusted_proxies,
            request.headers,
            request.client.host if request.client else None,
        )
    services.rate_limiter.check(gateway.gateway_id)
    limit = services.config.ingest_max_bytes
    sent = await request.body()
    try:
        async with services.connection() as conn:
            await verify_batch(
                conn,
                gateway,
                request.headers,
                idempotency_key or "",
                sent,
                services.config.batch_signature_window_s,
            )
    except SignatureRefused as exc:
        metrics = services.metrics
        metrics.ingest_batches.labels("signature_refused").inc()
        log.warning("batch signature refused", gateway_id=str(gateway.gateway_id),
                    reason=exc.code, detail=exc.detail)  # fmt: skip
        return Response(
            {"error": exc.code, "detail": exc.detail},  # type: ignore[arg-type]
            status_code=401,
            media_type=MediaType.JSON,
            headers={SERVER_TIME_HEADER: str(int(time.time()))},
        )
    body = inflate(sent, request.headers.get("content-encoding"), limit)
    batch = codec.uplink_batch.decode(body, request.headers.get("content-type"))
    if idempotency_key:
        try:
            batch.batch_id = uuid.UUID(idempotency_key)
        except ValueError:
            raise InvalidRequest("Idempotency-Key: must be the batch id (a UUID)") from None
    window = backend_window(dt.timedelta(days=services.config.log_retention_days))
    outcome = await store_batch(
        services.pool,
        services.partitions,
        gateway,
        batch,
        window,
        attendance=services.config.attendance_at_ingest,
    )
    metrics = services.metrics
    if outcome.response.duplicate:
        metrics.ingest_batches.labels("duplicate").inc()
    else:
        metrics.ingest_batches.labels("stored").inc()
        metrics.ingest_logs.inc(outcome.response.accepted)
        metrics.ingest_duplicates.inc(outcome.response.duplicates)
    log.info(
        "batch ingested",
        gateway_id=str(gateway.gateway_id),
        batch_id=str(batch.batch_id),
        logs=outcome.log_count,
        accepted=outcome.response.accepted,
        duplicates=outcome.response.duplicates,
        duplicate_batch=outcome.response.duplicate,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return Response(outcome.response, status_code=200)
