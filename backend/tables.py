"""Piccolo tables: the schema the admin API reads and writes.

The DDL lives in `piccolo_migrations/` as SQL, because PostgreSQL features the schema relies
on (range partitioning of agent_logs, partial unique indexes) are beyond Piccolo's auto
migrations. Hot paths (ingest, log queries) use asyncpg directly on the same pool.
"""

from __future__ import annotations

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    Boolean,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table


class Organization(Table, tablename="organizations"):
    id = UUID(primary_key=True)
    name = Varchar(length=200)
    created_at = Timestamptz(default=TimestamptzNow())


class AdminToken(Table, tablename="admin_tokens"):
    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    lookup_prefix = Varchar(length=16, index=True)
    token_hash = Varchar(length=64)
    name = Varchar(length=200, default="initial")
    created_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)


class Policy(Table, tablename="policies"):
    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    name = Varchar(length=200)
    is_default = Boolean(default=False)
    revision = Integer(default=1)
    checksum = Varchar(length=64)
    body = JSONB()
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class PolicyRevision(Table, tablename="policy_revisions"):
    id = UUID(primary_key=True)
    policy_id = ForeignKey(references=Policy)
    revision = Integer()
    checksum = Varchar(length=64)
    body = JSONB()
    created_at = Timestamptz(default=TimestamptzNow())
    # The audit event that made this revision (its author and changeset).
    audit_event_id = UUID(null=True, default=None)


class GatewayInstance(Table, tablename="gateway_instances"):
    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    name = Varchar(length=200)
    api_key_prefix = Varchar(length=16, index=True)
    api_key_hash = Varchar(length=64)
    # Fernet token: the backend hands the enrollment key to its gateway in `welcome`.
    enrollment_key_encrypted = Text()
    disabled_at = Timestamptz(null=True, default=None)
    status = Varchar(length=16, default="OFFLINE")
    last_seen_at = Timestamptz(null=True, default=None)
    hostname = Varchar(length=255, null=True, default=None)
    version = Varchar(length=256, null=True, default=None)
    last_status = JSONB(null=True, default=None)
    connected_instance = Varchar(length=200, null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())


class GatewayStatusSnapshot(Table, tablename="gateway_status_snapshots"):
    id = BigInt(primary_key=True)
    gateway_id = ForeignKey(references=GatewayInstance)
    org_id = ForeignKey(references=Organization)
    ts = Timestamptz()
    received_at = Timestamptz(default=TimestamptzNow())
    data = JSONB()


class GatewayPolicyState(Table, tablename="gateway_policy_states"):
    """The revision of one policy a gateway last acknowledged."""

    id = UUID(primary_key=True)
    gateway_id = ForeignKey(references=GatewayInstance)
    policy_id = ForeignKey(references=Policy)
    applied_revision = Integer()
    checksum = Varchar(length=64)
    applied = Boolean()
    reason = Text(null=True, default=None)
    acked_at = Timestamptz(default=TimestamptzNow())


class AgentInstance(Table, tablename="agent_instances"):
    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    gateway_id = ForeignKey(references=GatewayInstance)
    agent_uid = Varchar(length=128)
    hostname = Varchar(length=255, null=True, default=None)
    os = Varchar(length=256, null=True, default=None)
    version = Varchar(length=256, null=True, default=None)
    # None: the agent follows its organisation's default policy.
    policy_id = ForeignKey(references=Policy, null=True, default=None)
    status = Varchar(length=16, default="ONLINE")
    first_seen_at = Timestamptz(default=TimestamptzNow())
    last_seen_at = Timestamptz(default=TimestamptzNow())
    # ACTIVE, REVOKED or RESET (an operator's last decision), and when it was taken.
    access = Varchar(length=16, default="ACTIVE")
    access_changed_at = Timestamptz(null=True, default=None)
    # The gateway's id for the agent, where it differs from `id` (rows older than that).
    gateway_agent_id = UUID(null=True, default=None)


class AgentDeletion(Table, tablename="agent_deletions"):
    """An agent an operator deleted, until its gateway has surely forgotten it too."""

    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    gateway_id = ForeignKey(references=GatewayInstance)
    agent_uid = Varchar(length=128)
    agent_id = UUID()
    deleted_at = Timestamptz(default=TimestamptzNow())


class Device(Table, tablename="devices"):
    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    gateway_id = ForeignKey(references=GatewayInstance)
    vendor = Varchar(length=32)
    name = Varchar(length=256)
    # Null for terminals that connect to the gateway themselves (zkteco): see `serial`.
    host = Varchar(length=256, null=True, default=None)
    port = Integer(null=True, default=None)
    scheme = Varchar(length=8, default="http")
    username = Varchar(length=256, null=True, default=None)
    password_encrypted = Text(null=True, default=None)
    serial = Varchar(length=64, null=True, default=None)
    time_zone = Varchar(length=64, default="UTC")
    enabled = Boolean(default=True)
    status = Varchar(length=16, default="UNKNOWN")
    status_checked_at = Timestamptz(null=True, default=None)
    status_info = JSONB(null=True, default=None)
    status_error = Text(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class SeenDevice(Table, tablename="seen_devices"):
    """A terminal a gateway refused because no device has its serial (yet)."""

    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    gateway_id = ForeignKey(references=GatewayInstance)
    vendor = Varchar(length=32)
    serial = Varchar(length=256)
    address = Varchar(length=256, default="")
    model = Varchar(length=256, default="")
    firmware = Varchar(length=256, default="")
    first_seen_at = Timestamptz()
    last_seen_at = Timestamptz()


class GatewayCommand(Table, tablename="gateway_commands"):
    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    gateway_id = ForeignKey(references=GatewayInstance)
    type = Varchar(length=64)
    payload = JSONB()
    status = Varchar(length=16, default="PENDING")
    result = JSONB(null=True, default=None)
    error = Text(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    sent_at = Timestamptz(null=True, default=None)
    finished_at = Timestamptz(null=True, default=None)
    expires_at = Timestamptz()


class DeviceCommand(Table, tablename="device_commands"):
    id = UUID(primary_key=True)
    org_id = ForeignKey(references=Organization)
    gateway_id = ForeignKey(references=GatewayInstance)
    device_id = ForeignKey(references=Device)
    type = Varchar(length=64)
    payload = JSONB()
    status = Varchar(length=16, default="PENDING")
    result = JSONB(null=True, default=None)
    error = Text(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    sent_at = Timestamptz(null=True, default=None)
    finished_at = Timestamptz(null=True, default=None)
    expires_at = Timestamptz()
    # "cloud": created here; "local": run through the gateway's local API, reported after.
    origin = Varchar(length=16, default="cloud")


class AgentLog(Table, tablename="agent_logs"):
    """Partitioned by month on `ts`; unique on (org_id, ts, id). Written only by ingest."""

    id = UUID(primary_key=True)
    ts = Timestamptz()
    org_id = UUID()
    gateway_id = UUID()
    agent_id = UUID(null=True)
    agent_uid = Varchar(length=128)
    kind = Varchar(length=32)
    received_at = Timestamptz()
    data = JSONB()


class IngestBatch(Table, tablename="ingest_batches"):
    """Keyed by (gateway_id, id): a batch id is unique per gateway only."""

    id = UUID(primary_key=True)
    org_id = UUID()
    gateway_id = UUID()
    log_count = Integer()
    accepted = Integer()
    received_at = Timestamptz(default=TimestamptzNow())


ALL_TABLES: list[type[Table]] = [
    Organization,
    AdminToken,
    Policy,
    PolicyRevision,
    GatewayInstance,
    GatewayStatusSnapshot,
    GatewayPolicyState,
    AgentInstance,
    AgentDeletion,
    Device,
    SeenDevice,
    GatewayCommand,
    DeviceCommand,
    AgentLog,
    IngestBatch,
]
