"""Locust: gateways posting uplink batches straight to the backend's ingest endpoint.

Settings (environment): TD_GATEWAY_API_KEY (required), TD_LOADTEST_BATCH (logs per batch,
default 1000). A retried batch keeps its batch id, as a real gateway's does.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import uuid

import msgspec
from locust import HttpUser, between, task
from locust.exception import StopUser

from loadtests.logs import make_batch

API_KEY = os.environ.get("TD_GATEWAY_API_KEY", "")
BATCH = int(os.environ.get("TD_LOADTEST_BATCH", "1000"))
AGENTS_PER_GATEWAY = 50


class Gateway(HttpUser):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        if not API_KEY:
            raise StopUser("TD_GATEWAY_API_KEY is not set")
        self.rng = random.Random()
        self.agents = [f"load-gw-{uuid.uuid4().hex[:10]}" for _ in range(AGENTS_PER_GATEWAY)]

    @task
    def post_batch(self) -> None:
        logs = make_batch(self.rng, BATCH)
        groups: dict[str, list[dict[str, object]]] = {}
        for log in logs:
            groups.setdefault(self.rng.choice(self.agents), []).append(log)
        batch_id = str(uuid.uuid4())
        body = msgspec.msgpack.encode(
            {
                "batch_id": batch_id,
                "gateway_id": "",
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "groups": [{"agent_uid": a, "logs": g} for a, g in groups.items()],
            }
        )
        with self.client.post(
            "/v2/ingest/logs",
            data=body,
            headers={
                "X-API-Key": API_KEY,
                "Content-Type": "application/msgpack",
                "Idempotency-Key": batch_id,
            },
            name="/v2/ingest/logs",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"ingest answered {response.status_code}: {response.text[:200]}")
