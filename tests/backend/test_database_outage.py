"""While the database cannot be reached, the backend says "retry" (503), never "your key is
wrong" and never 500: a gateway told its valid key is refused stops trusting it."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import asyncpg
import httpx
import pytest
from litestar import Request

from backend.app import handle_error
from tests.backend.test_control import upgrade_status
from tests.support.backend import running_backend


async def _allow_connections(database_url: str, allow: bool) -> None:
    name = urllib.parse.urlsplit(database_url).path.lstrip("/")
    conn = await asyncpg.connect(database_url, database="postgres")
    try:
        await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allow).lower()}")
        if not allow:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.anyio
async def test_control_upgrade_during_a_database_outage_is_503_not_a_refused_key(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        _, api_key, _ = backend.create_gateway()
        async with httpx.AsyncClient(base_url=backend.url) as client:
            # Positive control: the same key is accepted while the database is up.
            assert await upgrade_status(client, api_key) == 101
            await _allow_connections(database_url, False)
            try:
                during = await upgrade_status(client, api_key)
            finally:
                await _allow_connections(database_url, True)
    assert during == 503


def test_a_connection_broken_mid_operation_is_answered_503() -> None:
    # How asyncpg's pool reports a connection PostgreSQL terminated under it (seen under
    # `make chaos`): retryable, not a server bug.
    scope = {"type": "http", "method": "POST", "path": "/v2/ingest/logs", "headers": []}
    request: Request = Request(scope=scope)  # type: ignore[arg-type]
    response = handle_error(
        request,
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
    )
    assert response.status_code == 503
    assert response.content == {
        "error": "unavailable",
        "detail": "the database is not reachable; retry shortly",
    }
