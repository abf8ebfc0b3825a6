"""Helpers for end-to-end tests: a real backend, a real `td-gateway run`, PostgreSQL reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx

from protocol.agent import Log
from tests.gateway.helpers import logs_json
from tests.gateway.process import GatewayProcess
from tests.support.backend import BackendProcess


def stored_ids(database_url: str) -> list[str]:
    """Every log id in agent_logs, one entry per row (duplicates would show twice)."""

    async def fetch() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT id FROM agent_logs")
        finally:
            await conn.close()
        return [str(row["id"]) for row in rows]

    return asyncio.run(fetch())


def poll(predicate: Callable[[], bool], within_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_gateway(
    tmp_path: Path, backend: BackendProcess | None, *flags: str, name: str = "gw"
) -> tuple[GatewayProcess, str]:
    """A `td-gateway run` enrolled in `backend` (or pointing nowhere); returns it and the
    enrollment key agents use."""
    enrollment_key = "e2e-enrollment"
    backend_flags: list[str] = []
    env = {}
    if backend is not None:
        _, api_key, enrollment_key = backend.create_gateway(name)
        backend_flags = ["--backend-url", backend.url]
        env["TD_GATEWAY_API_KEY"] = api_key
    env["TD_ENROLLMENT_KEY"] = enrollment_key
    gateway = GatewayProcess(
        tmp_path / name,
        *backend_flags,
        "--upload-backoff-base-s",
        "0.05",
        "--upload-backoff-cap-s",
        "0.5",
        *flags,
        env=env,
    )
    return gateway.start(), enrollment_key


def register(client: httpx.Client, enrollment_key: str, agent_uid: str = "agent-1") -> str:
    response = client.post(
        "/v1/agents/register",
        json={"agent_uid": agent_uid, "hostname": "ws-1"},
        headers={"X-Enrollment-Key": enrollment_key},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def post_logs(client: httpx.Client, token: str, logs: Sequence[Log]) -> httpx.Response:
    return client.post(
        "/v1/logs", content=logs_json(logs), headers={"Authorization": f"Bearer {token}"}
    )


def health(gateway: GatewayProcess) -> dict[str, object]:
    body: dict[str, object] = httpx.get(gateway.url + "/health", timeout=10).json()
    return body
