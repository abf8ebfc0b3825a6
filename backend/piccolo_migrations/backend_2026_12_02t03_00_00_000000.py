"""Data lifecycle: retention per organisation and log kind, and months held after a restore.

Works on a database with rows: both tables are new; an organisation without a row in
`retention_policies` keeps the documented defaults (backend.lifecycle.retention).
"""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-02T03:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "retention policies; restored archive months"

STATEMENTS = [
    # Only the kinds an organisation chose; the others follow the defaults.
    """
    CREATE TABLE retention_policies (
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        kind varchar(32) NOT NULL,
        days integer NOT NULL CHECK (days > 0),
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (org_id, kind)
    )
    """,
    # A month `td-backend archive restore` brought back: maintenance leaves it until
    # hold_until, then archives it again (merging, so nothing is duplicated).
    """
    CREATE TABLE archive_restores (
        org_id uuid NOT NULL,
        month date NOT NULL,
        restored_at timestamptz NOT NULL DEFAULT now(),
        rows_restored bigint NOT NULL DEFAULT 0,
        hold_until timestamptz NOT NULL,
        PRIMARY KEY (org_id, month)
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
