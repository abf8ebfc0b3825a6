"""A scripted stand-in for the backend's ingest endpoint, served for real on port 0.

Used only for the answers the real backend cannot be made to give on demand (a 400 for one
batch, a 503, a 401); everything else runs against the real backend in the e2e tests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio
import zstandard

from protocol import codec
from protocol.uplink import UplinkBatch


@dataclass
class Received:
    idempotency_key: str
    api_key: str
    batch: UplinkBatch
    status: int


@dataclass
class ScriptedIngest:
    """Answers the queued statuses in order, then 200 with the real response shape."""

    script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)

    def then(self, status: int, **headers: str) -> ScriptedIngest:
        self.script.append((status, headers))
        return self

    def delivered_ids(self) -> list[str]:
        return [
            str(log.id)
            for item in self.received
            if item.status == 200
            for group in item.batch.groups
            for log in group.logs
        ]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert headers["content-encoding"] == "zstd"
        assert headers["content-type"] == "application/msgpack"
        raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=256 * 1024 * 1024)
        batch = codec.uplink_batch.decode_msgpack(raw)
        status, extra = self.script.popleft() if self.script else (200, {})
        self.received.append(
            Received(headers["idempotency-key"], headers.get("x-api-key", ""), batch, status)
        )
        answer = (
            codec.json_encoder.encode({"accepted": batch.log_count(), "duplicates": 0})
            if status == 200
            else b'{"error": "scripted", "detail": "scripted answer"}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")]
                + [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def serve_ingest(app: ScriptedIngest) -> AsyncIterator[str]:
    """Serves `app` on 127.0.0.1:<free port>; yields its base URL."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "WARNING"
    config.graceful_timeout = 0.5
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn.trio.serve(
                app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        try:
            yield binds[0]
        finally:
            stop.set()
