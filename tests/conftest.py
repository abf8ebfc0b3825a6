"""Fixtures every test package shares: the asyncio backend for anyio tests and one embedded
PostgreSQL per test session, with a fresh database per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pgserver
import pytest
from hypothesis import HealthCheck, settings

# Hypothesis's speed checks are timing assertions: on a busy 2-core CI machine they fail
# tests whose properties hold. Properties are checked; speed belongs in bench/.
settings.register_profile(
    "td", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("td")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres() -> Iterator[pgserver.PostgresServer]:
    # A short path: PostgreSQL's Unix socket lives in the data directory and socket paths
    # are limited to ~100 bytes, which pytest's tmp_path can exceed.
    pgdata = tempfile.mkdtemp(prefix="tdpg-")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
def database_url(postgres: pgserver.PostgresServer) -> str:
    """A PostgreSQL URL for an empty database of this test's own."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres.psql(f"CREATE DATABASE {name};")
    return str(postgres.get_uri(name))
