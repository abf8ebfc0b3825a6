"""Accounts and the audit trail: users with roles, their personal tokens, and audit_events,
which the database itself keeps append-only."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-02T01:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "users, user tokens, audit events"

STATEMENTS = [
    """
    CREATE TABLE users (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        email varchar(254) NOT NULL,
        name varchar(200) NOT NULL,
        role varchar(16) NOT NULL
            CHECK (role IN ('owner', 'admin', 'operator', 'hr', 'viewer')),
        password_hash text,
        disabled_at timestamptz,
        -- Dashboard sessions issued before this stay ended, even once the user is enabled.
        sessions_revoked_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # An address is one user per organisation, whatever its case.
    "CREATE UNIQUE INDEX users_org_email ON users (org_id, lower(email))",
    "CREATE INDEX users_org_created ON users (org_id, created_at, id)",
    """
    CREATE TABLE user_tokens (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name varchar(200) NOT NULL,
        lookup_prefix varchar(16) NOT NULL,
        token_hash varchar(64) NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz,
        revoked_at timestamptz
    )
    """,
    "CREATE INDEX user_tokens_prefix ON user_tokens (lookup_prefix)",
    "CREATE INDEX user_tokens_user ON user_tokens (user_id, created_at, id)",
    # No foreign key to organizations: nothing may cascade into (and so delete) audit rows.
    """
    CREATE TABLE audit_events (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL,
        at timestamptz NOT NULL DEFAULT clock_timestamp(),
        actor_kind varchar(16) NOT NULL,
        actor_id uuid,
        actor_label varchar(320) NOT NULL,
        role varchar(16) NOT NULL,
        action varchar(64) NOT NULL,
        target_type varchar(32) NOT NULL,
        target_id varchar(128),
        changes jsonb NOT NULL DEFAULT '{}',
        remote_address varchar(64)
    )
    """,
    "CREATE INDEX audit_events_org_at ON audit_events (org_id, at, id)",
    "CREATE INDEX audit_events_target ON audit_events (org_id, target_type, target_id, at, id)",
    # Append-only in the database itself, so no code path (nor a bug in one) can rewrite
    # or remove what happened.
    """
    CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_events is append-only: % is refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events"
    " FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
    " FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
    # A revision's author and changeset live in the audit event that made it; older
    # revisions have none.
    "ALTER TABLE policy_revisions ADD COLUMN audit_event_id uuid",
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
