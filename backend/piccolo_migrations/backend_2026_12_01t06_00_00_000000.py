"""Terminals that connect to the gateway (ZKTeco PUSH): known by serial, no host or password;
and the unknown ones gateways saw knocking (`seen_devices`), for an operator to adopt."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-01T06:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "devices by serial; seen devices"

STATEMENTS = [
    "ALTER TABLE devices ALTER COLUMN host DROP NOT NULL",
    "ALTER TABLE devices ALTER COLUMN port DROP NOT NULL",
    "ALTER TABLE devices ALTER COLUMN username DROP NOT NULL",
    "ALTER TABLE devices ALTER COLUMN password_encrypted DROP NOT NULL",
    "ALTER TABLE devices ADD COLUMN serial varchar(64)",
    "ALTER TABLE devices ADD COLUMN time_zone varchar(64) NOT NULL DEFAULT 'UTC'",
    # A pushing terminal is found by serial: one device per serial on a gateway.
    "CREATE UNIQUE INDEX devices_gateway_serial ON devices (gateway_id, vendor, serial)"
    " WHERE serial IS NOT NULL",
    """
    CREATE TABLE seen_devices (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        vendor varchar(32) NOT NULL,
        serial varchar(256) NOT NULL,
        address varchar(256) NOT NULL DEFAULT '',
        model varchar(256) NOT NULL DEFAULT '',
        firmware varchar(256) NOT NULL DEFAULT '',
        first_seen_at timestamptz NOT NULL,
        last_seen_at timestamptz NOT NULL,
        UNIQUE (gateway_id, vendor, serial)
    )
    """,
    "CREATE INDEX seen_devices_org ON seen_devices (org_id, first_seen_at, id)",
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
