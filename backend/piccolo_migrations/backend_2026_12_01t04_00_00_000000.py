"""People and attendance: the organisation's zone and default shift, shifts, employees with
their cards and workstations, and the tables the attendance engine derives at ingest."""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-01T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "employees, shifts and attendance"

STATEMENTS = [
    # Existing organisations keep working: UTC until an admin sets their zone.
    "ALTER TABLE organizations ADD COLUMN time_zone varchar(64) NOT NULL DEFAULT 'UTC'",
    """
    CREATE TABLE shifts (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        name varchar(200) NOT NULL,
        start_time time NOT NULL,
        end_time time NOT NULL,
        working_days smallint[] NOT NULL,
        late_grace_s integer NOT NULL DEFAULT 0,
        early_grace_s integer NOT NULL DEFAULT 0,
        min_punch_gap_s integer NOT NULL DEFAULT 60,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX shifts_org ON shifts (org_id, created_at, id)",
    "ALTER TABLE organizations ADD COLUMN default_shift_id uuid"
    " REFERENCES shifts (id) ON DELETE SET NULL",
    """
    CREATE TABLE employees (
        id uuid PRIMARY KEY,
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        employee_no varchar(32) NOT NULL,
        name varchar(128) NOT NULL,
        department varchar(128),
        status varchar(8) NOT NULL DEFAULT 'active',
        time_zone varchar(64),
        shift_id uuid REFERENCES shifts (id) ON DELETE SET NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        left_at timestamptz,
        UNIQUE (org_id, employee_no)
    )
    """,
    "CREATE INDEX employees_org ON employees (org_id, created_at, id)",
    "CREATE INDEX employees_department ON employees (org_id, department, employee_no)",
    # A card opens doors for one person of the organisation at a time.
    """
    CREATE TABLE employee_cards (
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        card_no varchar(32) NOT NULL,
        employee_id uuid NOT NULL REFERENCES employees (id) ON DELETE CASCADE,
        PRIMARY KEY (org_id, card_no)
    )
    """,
    "CREATE INDEX employee_cards_employee ON employee_cards (employee_id)",
    # A workstation's owner over time: a re-assigned PC never rewrites earlier days.
    """
    CREATE TABLE employee_agents (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
        employee_id uuid NOT NULL REFERENCES employees (id) ON DELETE CASCADE,
        agent_uid varchar(128) NOT NULL,
        valid_from timestamptz NOT NULL,
        valid_to timestamptz
    )
    """,
    "CREATE UNIQUE INDEX employee_agents_current ON employee_agents (org_id, agent_uid)"
    " WHERE valid_to IS NULL",
    "CREATE INDEX employee_agents_employee ON employee_agents (employee_id)",
    # Granted door events, copied from agent_logs at ingest; a terminal replaying an event
    # (same device, same serial) is one punch.
    """
    CREATE TABLE punches (
        org_id uuid NOT NULL,
        ts timestamptz NOT NULL,
        log_id uuid NOT NULL,
        device_id varchar(256) NOT NULL,
        serial_no bigint NOT NULL,
        employee_no varchar(256),
        card_no varchar(256),
        major integer NOT NULL,
        minor integer NOT NULL,
        PRIMARY KEY (org_id, device_id, serial_no)
    )
    """,
    "CREATE INDEX punches_employee ON punches (org_id, employee_no, ts)",
    "CREATE INDEX punches_card ON punches (org_id, card_no, ts) WHERE card_no IS NOT NULL",
    # PC activity per workstation in 15-minute UTC buckets, summed at ingest.
    """
    CREATE TABLE activity_buckets (
        org_id uuid NOT NULL,
        agent_uid varchar(128) NOT NULL,
        bucket timestamptz NOT NULL,
        foreground_ms bigint NOT NULL DEFAULT 0,
        idle_ms bigint NOT NULL DEFAULT 0,
        first_ts timestamptz NOT NULL,
        last_ts timestamptz NOT NULL,
        PRIMARY KEY (org_id, agent_uid, bucket)
    )
    """,
    # Foreground time per application and per domain, in hourly UTC buckets.
    """
    CREATE TABLE activity_usage (
        org_id uuid NOT NULL,
        agent_uid varchar(128) NOT NULL,
        bucket timestamptz NOT NULL,
        item_kind char(1) NOT NULL,
        item varchar(256) NOT NULL,
        ms bigint NOT NULL,
        PRIMARY KEY (org_id, agent_uid, bucket, item_kind, item)
    )
    """,
    # What changed since the days were last computed: (employee number, card or workstation)
    # and the UTC date of the change; the engine turns them into employee-days.
    """
    CREATE TABLE attendance_dirty (
        org_id uuid NOT NULL,
        subject_kind char(1) NOT NULL,
        subject varchar(256) NOT NULL,
        utc_day date NOT NULL,
        marked_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (org_id, subject_kind, subject, utc_day)
    )
    """,
    """
    CREATE TABLE attendance_days (
        org_id uuid NOT NULL,
        employee_id uuid NOT NULL REFERENCES employees (id) ON DELETE CASCADE,
        work_date date NOT NULL,
        shift_id uuid,
        scheduled_start timestamptz,
        scheduled_end timestamptz,
        window_start timestamptz NOT NULL,
        window_end timestamptz NOT NULL,
        first_in timestamptz,
        last_out timestamptz,
        worked_s integer NOT NULL DEFAULT 0,
        late_s integer NOT NULL DEFAULT 0,
        early_leave_s integer NOT NULL DEFAULT 0,
        status varchar(16) NOT NULL,
        punches timestamptz[] NOT NULL DEFAULT '{}',
        first_activity timestamptz,
        last_activity timestamptz,
        active_s integer NOT NULL DEFAULT 0,
        idle_s integer NOT NULL DEFAULT 0,
        flags text[] NOT NULL DEFAULT '{}',
        final boolean NOT NULL DEFAULT false,
        computed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (employee_id, work_date)
    )
    """,
    "CREATE INDEX attendance_days_org_date ON attendance_days (org_id, work_date)",
    # Which terminal has an employee: the last user command per device and employee no.
    "CREATE INDEX device_commands_user ON device_commands"
    " (device_id, (payload->>'employee_no'), created_at)"
    " WHERE type IN ('add_user', 'delete_user')",
    "CREATE INDEX attendance_days_open ON attendance_days (window_end) WHERE NOT final",
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
