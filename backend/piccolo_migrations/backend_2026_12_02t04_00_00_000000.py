"""Sign-in through the organisation's OpenID Connect provider: one row of settings per
organisation, its client secret sealed with the backend's secret box."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-02T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "organisation OIDC settings"

STATEMENTS = [
    # A new table: existing organisations simply have no row (OIDC off).
    """
    CREATE TABLE organization_oidc (
        org_id uuid PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
        issuer varchar(512) NOT NULL,
        client_id varchar(256) NOT NULL,
        client_secret_encrypted text NOT NULL,
        enabled boolean NOT NULL DEFAULT true,
        updated_at timestamptz NOT NULL DEFAULT now()
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
