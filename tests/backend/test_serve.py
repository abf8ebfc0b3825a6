"""The real `td-backend serve` process: migrations on start, ingest over HTTP, clean restarts."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import msgspec

from tests.backend.conftest import batch, log
from tests.support.backend import running_backend


def test_serve_ingests_over_http_and_survives_a_restart(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway_id, api_key, enrollment_key = backend.create_gateway("edge-1")
        assert enrollment_key.startswith("tde_")
        body = msgspec.msgpack.encode(batch({"pc-1": [log(), log("session")]}))
        headers = {
            "X-API-Key": api_key,
            "Content-Type": "application/msgpack",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        first = httpx.post(f"{backend.url}/v2/ingest/logs", content=body, headers=headers)
        assert first.json() == {"accepted": 2}

        assert backend.stop() == 0
        assert not backend.running
        backend.start()

        # The retry after the outage is recognised: the batch id survived the restart.
        again = httpx.post(f"{backend.url}/v2/ingest/logs", content=body, headers=headers)
        assert again.json() == {"accepted": 0, "duplicate": True}
        with backend.admin() as admin:
            logs = admin.get("/v2/logs").json()["items"]
            gateways = admin.get("/v2/gateways").json()["items"]
        assert len(logs) == 2
        assert [g["id"] for g in gateways] == [gateway_id]
        assert httpx.get(f"{backend.url}/schema/openapi.json").status_code == 200


def test_the_same_batch_sent_concurrently_is_stored_once(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url) as backend:
        _, api_key, _ = backend.create_gateway()
        body = msgspec.json.encode(batch({"pc-1": [log(), log(), log()]}))
        headers = {"X-API-Key": api_key, "Content-Type": "application/json"}

        async def post_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=backend.url, timeout=30) as client:
                return await asyncio.gather(
                    *(
                        client.post("/v2/ingest/logs", content=body, headers=headers)
                        for _ in range(8)
                    )
                )

        responses = asyncio.run(post_all())
        with backend.admin() as admin:
            stored = admin.get("/v2/logs").json()["items"]
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.json()["accepted"] for r in responses) == [0] * 7 + [3]
    assert len(stored) == 3
