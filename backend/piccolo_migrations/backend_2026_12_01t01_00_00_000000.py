"""Trust boundaries: tenant-scoped dedupe, named admin tokens, the secret key's fingerprint.

Every statement works on a database that already holds rows: the new unique keys are wider
than the old ones (each old key was already unique), and new columns have defaults.
"""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-01T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "tenant-scoped dedupe, named admin tokens, secret key fingerprint"

STATEMENTS = [
    # Dedupe per organisation: another organisation's gateway sending the same (ts, id)
    # first must not suppress this one's log. The partition key (ts) stays in the key, as
    # PostgreSQL requires for a unique constraint on a partitioned table; every partition
    # gets the index. The new key also serves the (org_id, ts, id) queries of the old index.
    "ALTER TABLE agent_logs ADD CONSTRAINT agent_logs_org_ts_id_key UNIQUE (org_id, ts, id)",
    "ALTER TABLE agent_logs DROP CONSTRAINT agent_logs_ts_id_key",
    "DROP INDEX IF EXISTS agent_logs_org_ts",
    # Batch ids are the gateway's own: one gateway's ids cannot collide with another's.
    "ALTER TABLE ingest_batches DROP CONSTRAINT ingest_batches_pkey",
    "ALTER TABLE ingest_batches ADD PRIMARY KEY (gateway_id, id)",
    # Several named admin tokens per organisation, each with an optional expiry.
    "ALTER TABLE admin_tokens ADD COLUMN name varchar(200) NOT NULL DEFAULT 'initial'",
    "ALTER TABLE admin_tokens ADD COLUMN expires_at timestamptz",
    "CREATE INDEX admin_tokens_org ON admin_tokens (org_id, created_at, id)",
    # One row: an HMAC of a constant under TD_SECRET_KEY (never the key), so an instance
    # started with another key refuses to start instead of failing on every secret.
    """
    CREATE TABLE secret_key_fingerprint (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        fingerprint varchar(64) NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
]


async def run_statements() -> None:
    engine = engine_finder()
    assert engine is not None, "bind an engine first (backend.db.bind_engine)"
    for statement in STATEMENTS:
        await engine.run_ddl(statement)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="backend", description=DESCRIPTION)
    manager.add_raw(run_statements)
    return manager
