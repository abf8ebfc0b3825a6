"""Device commands run through a gateway's local API (the gateway's ids), marked by origin."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-01T07:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "device command origin: cloud or local"

STATEMENTS = [
    # Existing rows were all created through the backend: the default says so.
    "ALTER TABLE device_commands ADD COLUMN origin varchar(16) NOT NULL DEFAULT 'cloud'",
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
