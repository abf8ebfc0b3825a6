"""Agent access: operators revoke, reset and delete agents; one agent id from the gateway.

`agent_instances.access` is ACTIVE, REVOKED or RESET, changed at `access_changed_at` (which
orders the decisions at the gateway); `gateway_agent_id` is the id the gateway gave the
agent when it differs from ours (agents first seen before ids were shared). Deleted agents
leave a row in `agent_deletions` so a gateway that was offline still forgets them. Works on
a database with rows: every new column has a default or allows NULL.
"""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-01T02:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "agent access and deletions"

STATEMENTS = [
    "ALTER TABLE agent_instances ADD COLUMN access varchar(16) NOT NULL DEFAULT 'ACTIVE'",
    "ALTER TABLE agent_instances ADD COLUMN access_changed_at timestamptz",
    "ALTER TABLE agent_instances ADD COLUMN gateway_agent_id uuid",
    """
    CREATE TABLE agent_deletions (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        agent_uid varchar(128) NOT NULL,
        agent_id uuid NOT NULL,
        deleted_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX agent_deletions_gateway ON agent_deletions (gateway_id, agent_id)",
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
