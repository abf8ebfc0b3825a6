"""The database: one Piccolo engine whose asyncpg pool also serves the hot paths, and migrations."""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.postgres import PostgresEngine

from backend.tables import ALL_TABLES

# Piccolo finds its app registry (and the engine `bind_engine` installs) through this module.
os.environ.setdefault("PICCOLO_CONF", "backend.piccolo_conf")

# Serialises migrations when several instances start at once on one database.
_MIGRATION_LOCK_ID = 0x7D_6D_69_67

# Ingest COPYs rows into this per-connection table, then moves them with one INSERT … SELECT.
# ON COMMIT DELETE ROWS empties it after every transaction that touched it.
STAGING_TABLE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS ingest_staging (
    agent_id uuid,
    agent_uid varchar(128) NOT NULL,
    kind varchar(32) NOT NULL,
    ts timestamptz NOT NULL,
    id uuid NOT NULL,
    data jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""


# What the database (or the pool's view of it) raises while it is down, restarting or has
# just dropped our connections: a retryable condition, answered 503, never a 500. asyncpg's
# InternalClientError is how a connection terminated mid-operation shows up in its pool.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
    # "database … is not currently accepting connections" (SQLSTATE 55000) while it is
    # being taken offline or restored.
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
)


class MigrationFailed(RuntimeError):
    """A migration did not apply; the message is Piccolo's."""


def bind_engine(engine: PostgresEngine) -> None:
    """Point every Piccolo table (and Piccolo's own migration table) at `engine`."""
    import backend.piccolo_conf as piccolo_conf

    piccolo_conf.DB = engine
    for table in [*ALL_TABLES, Migration]:
        table._meta.db = engine  # type: ignore[attr-defined]


def _engine(url: str) -> PostgresEngine:
    return PostgresEngine(config={"dsn": url})


async def _init_connection(conn: Any) -> None:
    await conn.execute(STAGING_TABLE_DDL)


class Database:
    """The engine and its pool; `pool` is a plain asyncpg pool for raw SQL."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self.engine: PostgresEngine | None = None

    @property
    def pool(self) -> Any:
        assert self.engine is not None and self.engine.pool is not None, "database not started"
        return self.engine.pool

    async def start(self) -> None:
        self.engine = _engine(self.url)
        bind_engine(self.engine)
        await self.engine.start_connection_pool(
            min_size=1, max_size=self.pool_size, init=_init_connection
        )

    async def close(self) -> None:
        if self.engine is not None and self.engine.pool is not None:
            await self.engine.close_connection_pool()


async def migrate(url: str) -> None:
    """Apply every migration not yet applied; safe to run concurrently and repeatedly."""
    lock_conn = await asyncpg.connect(url)
    try:
        await lock_conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        bind_engine(_engine(url))
        # Piccolo narrates each step on stdout; our stdout is for command output only.
        narration = io.StringIO()
        with contextlib.redirect_stdout(narration):
            result = await ForwardsMigrationManager(app_name="backend").run()
        if not result.success:
            raise MigrationFailed(f"{result.message}\n{narration.getvalue()}")
    finally:
        await lock_conn.close()
