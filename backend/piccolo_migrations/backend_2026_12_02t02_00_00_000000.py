"""Gateways' client certificates: the backend's CA, the certificates issued by serial, and
the organisation's switch that turns the API-key fallback off."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-02T02:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "gateway client certificates and their CA; require_client_certificate"

STATEMENTS = [
    # One row: instances sharing the database share the CA. The key is Fernet-encrypted
    # with TD_SECRET_KEY.
    """CREATE TABLE gateway_ca (
        id smallint PRIMARY KEY CHECK (id = 1),
        certificate_pem text NOT NULL,
        key_encrypted text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE gateway_certificates (
        serial varchar(64) PRIMARY KEY,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        certificate_pem text NOT NULL,
        not_before timestamptz NOT NULL,
        not_after timestamptz NOT NULL,
        issued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        first_used_at timestamptz,
        revoked_at timestamptz,
        revoked_reason text
    )""",
    "CREATE INDEX gateway_certificates_gateway ON gateway_certificates (gateway_id, issued_at)",
    # Existing organisations keep accepting API keys until they switch it on.
    "ALTER TABLE organizations ADD COLUMN require_client_certificate boolean NOT NULL"
    " DEFAULT false",
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
