"""Initial schema: organisations, auth, policies, the fleet, commands, logs and batches."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-26T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "initial schema"

STATEMENTS = [
    """
    CREATE TABLE organizations (
        id uuid PRIMARY KEY,
        name varchar(200) NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE admin_tokens (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        lookup_prefix varchar(16) NOT NULL,
        token_hash varchar(64) NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    )
    """,
    "CREATE INDEX admin_tokens_lookup_prefix ON admin_tokens (lookup_prefix)",
    """
    CREATE TABLE policies (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        name varchar(200) NOT NULL,
        is_default boolean NOT NULL DEFAULT false,
        revision integer NOT NULL DEFAULT 1,
        checksum varchar(64) NOT NULL,
        body jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # One default policy per organisation.
    "CREATE UNIQUE INDEX policies_one_default ON policies (org_id) WHERE is_default",
    "CREATE INDEX policies_org ON policies (org_id, id)",
    """
    CREATE TABLE policy_revisions (
        id uuid PRIMARY KEY,
        policy_id uuid NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
        revision integer NOT NULL,
        checksum varchar(64) NOT NULL,
        body jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (policy_id, revision)
    )
    """,
    """
    CREATE TABLE gateway_instances (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        name varchar(200) NOT NULL,
        api_key_prefix varchar(16) NOT NULL,
        api_key_hash varchar(64) NOT NULL,
        enrollment_key_encrypted text NOT NULL,
        disabled_at timestamptz,
        status varchar(16) NOT NULL DEFAULT 'OFFLINE',
        last_seen_at timestamptz,
        hostname varchar(255),
        version varchar(256),
        last_status jsonb,
        connected_instance varchar(200),
        created_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX gateway_instances_api_key_prefix ON gateway_instances (api_key_prefix)",
    "CREATE INDEX gateway_instances_org ON gateway_instances (org_id, id)",
    """
    CREATE TABLE gateway_status_snapshots (
        id bigserial PRIMARY KEY,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        ts timestamptz NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        data jsonb NOT NULL
    )
    """,
    "CREATE INDEX gateway_status_snapshots_gateway ON gateway_status_snapshots"
    " (gateway_id, received_at DESC, id DESC)",
    "CREATE INDEX gateway_status_snapshots_received ON gateway_status_snapshots (received_at)",
    """
    CREATE TABLE agent_instances (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        agent_uid varchar(128) NOT NULL,
        hostname varchar(255),
        os varchar(256),
        version varchar(256),
        policy_id uuid REFERENCES policies (id) ON DELETE SET NULL,
        status varchar(16) NOT NULL DEFAULT 'ONLINE',
        first_seen_at timestamptz NOT NULL DEFAULT now(),
        last_seen_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (gateway_id, agent_uid)
    )
    """,
    "CREATE INDEX agent_instances_org ON agent_instances (org_id, id)",
    """
    CREATE TABLE gateway_policy_states (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        policy_id uuid NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
        applied_revision integer NOT NULL,
        checksum varchar(64) NOT NULL,
        applied boolean NOT NULL,
        reason text,
        acked_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (gateway_id, policy_id)
    )
    """,
    """
    CREATE TABLE devices (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        vendor varchar(32) NOT NULL,
        name varchar(256) NOT NULL,
        host varchar(256) NOT NULL,
        port integer NOT NULL,
        scheme varchar(8) NOT NULL DEFAULT 'http',
        username varchar(256) NOT NULL,
        password_encrypted text NOT NULL,
        enabled boolean NOT NULL DEFAULT true,
        status varchar(16) NOT NULL DEFAULT 'UNKNOWN',
        status_checked_at timestamptz,
        status_info jsonb,
        status_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX devices_org ON devices (org_id, id)",
    "CREATE INDEX devices_gateway ON devices (gateway_id)",
    """
    CREATE TABLE gateway_commands (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        type varchar(64) NOT NULL,
        payload jsonb NOT NULL DEFAULT '{}',
        status varchar(16) NOT NULL DEFAULT 'PENDING',
        result jsonb,
        error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        sent_at timestamptz,
        finished_at timestamptz,
        expires_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX gateway_commands_open ON gateway_commands (gateway_id, created_at)"
    " WHERE status IN ('PENDING', 'SENT')",
    """
    CREATE TABLE device_commands (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        gateway_id uuid NOT NULL REFERENCES gateway_instances (id) ON DELETE CASCADE,
        device_id uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
        type varchar(64) NOT NULL,
        payload jsonb NOT NULL DEFAULT '{}',
        status varchar(16) NOT NULL DEFAULT 'PENDING',
        result jsonb,
        error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        sent_at timestamptz,
        finished_at timestamptz,
        expires_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX device_commands_open ON device_commands (gateway_id, created_at)"
    " WHERE status IN ('PENDING', 'SENT')",
    # Partitions (agent_logs_yYYYYmMM) are created by backend.partitions, ahead of time and
    # on demand; there is no default partition, so a month never needs splitting later.
    """
    CREATE TABLE agent_logs (
        ts timestamptz NOT NULL,
        id uuid NOT NULL,
        org_id uuid NOT NULL,
        gateway_id uuid NOT NULL,
        agent_id uuid,
        agent_uid varchar(128) NOT NULL,
        kind varchar(32) NOT NULL,
        received_at timestamptz NOT NULL,
        data jsonb NOT NULL,
        UNIQUE (ts, id)
    ) PARTITION BY RANGE (ts)
    """,
    "CREATE INDEX agent_logs_org_ts ON agent_logs (org_id, ts, id)",
    "CREATE INDEX agent_logs_agent_ts ON agent_logs (agent_id, ts, id)",
    """
    CREATE TABLE ingest_batches (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL,
        gateway_id uuid NOT NULL,
        log_count integer NOT NULL,
        accepted integer NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX ingest_batches_received ON ingest_batches (received_at)",
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
