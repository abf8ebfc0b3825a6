"""Reads that build control messages and writes that record what gateways report."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from backend.crypto import SecretBox
from protocol.agent import PolicyBody
from protocol.control import (
    DEVICE_COMMAND_TYPES,
    AgentAccess,
    AgentAssignment,
    AgentsSeen,
    Command,
    CommandResult,
    DeviceConfig,
    DevicesSeen,
    DeviceState,
    LocalCommandRun,
    PolicyAck,
    PolicyUpdate,
    Status,
)

_json = msgspec.json.Encoder()
_COMMAND_TABLES = ("gateway_commands", "device_commands")
OPEN = ("PENDING", "SENT")


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def policy_update(row: Any) -> PolicyUpdate:
    return PolicyUpdate(
        policy_id=str(row["id"]),
        revision=row["revision"],
        checksum=row["checksum"],
        body=msgspec.json.decode(row["body"], type=PolicyBody),
        is_default=row["is_default"],
    )


def device_config(row: Any, secrets: SecretBox) -> DeviceConfig:
    return DeviceConfig(
        device_id=str(row["id"]),
        vendor=row["vendor"],
        name=row["name"],
        host=row["host"] or "",
        port=row["port"] or 80,
        username=row["username"] or "",
        password=secrets.decrypt(row["password_encrypted"]) if row["password_encrypted"] else "",
        scheme=row["scheme"],
        enabled=row["enabled"],
        serial=row["serial"] or "",
        time_zone=row["time_zone"],
    )


def deleted_device(device_id: uuid.UUID) -> DeviceConfig:
    return DeviceConfig(
        device_id=str(device_id),
        vendor="",
        name="",
        host="",
        port=1,
        username="",
        password="",
        deleted=True,
    )


async def org_policies(conn: Any, org_id: uuid.UUID) -> list[PolicyUpdate]:
    rows = await conn.fetch(
        "SELECT id, revision, checksum, body, is_default FROM policies WHERE org_id = $1"
        " ORDER BY created_at, id",
        org_id,
    )
    return [policy_update(row) for row in rows]


async def policy(conn: Any, org_id: uuid.UUID, policy_id: uuid.UUID) -> PolicyUpdate | None:
    row = await conn.fetchrow(
        "SELECT id, revision, checksum, body, is_default FROM policies"
        " WHERE id = $1 AND org_id = $2",
        policy_id,
        org_id,
    )
    return policy_update(row) if row else None


async def assignments(
    conn: Any, gateway_id: uuid.UUID, agent_id: uuid.UUID | None = None
) -> list[AgentAssignment]:
    rows = await conn.fetch(
        "SELECT agent_uid, policy_id FROM agent_instances"
        " WHERE gateway_id = $1 AND ($2::uuid IS NULL OR id = $2) ORDER BY agent_uid",
        gateway_id,
        agent_id,
    )
    return [
        AgentAssignment(
            agent_uid=row["agent_uid"],
            policy_id=str(row["policy_id"]) if row["policy_id"] else None,
        )
        for row in rows
    ]


_ACCESS_ACTIONS = {"REVOKED": "revoke", "RESET": "reset"}


async def agent_access(conn: Any, gateway_id: uuid.UUID) -> list[AgentAccess]:
    """The gateway's revoked, reset and deleted agents, oldest decision first (sent in
    welcome and on every change; the gateway applies each decision once)."""
    rows = await conn.fetch(
        "SELECT agent_uid, coalesce(gateway_agent_id, id) AS agent_id, access AS action,"
        " access_changed_at AS changed_at FROM agent_instances"
        " WHERE gateway_id = $1 AND access IN ('REVOKED', 'RESET')"
        " AND access_changed_at IS NOT NULL"
        " UNION ALL SELECT agent_uid, agent_id, 'DELETED', deleted_at FROM agent_deletions"
        " WHERE gateway_id = $1 ORDER BY changed_at",
        gateway_id,
    )
    return [
        AgentAccess(
            agent_uid=row["agent_uid"],
            agent_id=str(row["agent_id"]),
            action=_ACCESS_ACTIONS.get(row["action"], "delete"),  # type: ignore[arg-type]
            changed_at=row["changed_at"],
        )
        for row in rows
    ]


def proposed_agent_ids(pairs: list[tuple[str, str | None]]) -> dict[str, uuid.UUID | None]:
    """The gateway's id for each agent uid, where it is one a row could adopt: a UUID that
    no other uid in the same message claims too."""
    ids = {uid: _uuid_or_none(text) if text else None for uid, text in pairs}
    claims: dict[uuid.UUID, int] = {}
    for agent_id in ids.values():
        if agent_id is not None:
            claims[agent_id] = claims.get(agent_id, 0) + 1
    return {uid: i if i is not None and claims[i] == 1 else None for uid, i in ids.items()}


async def adopt_agent_ids(
    conn: Any, org_id: uuid.UUID, gateway_id: uuid.UUID, proposed: dict[str, uuid.UUID | None]
) -> None:
    """Create the gateway's agents not known yet under the ids the gateway proposes, where
    no row anywhere has that id (never another gateway's or organisation's row) and the
    agent was not deleted by an operator. Conflicts of any kind, also with a concurrent
    insert, leave the uid to the caller's insert with a fresh id."""
    adoptable = [(uid, agent_id) for uid, agent_id in proposed.items() if agent_id is not None]
    if not adoptable:
        return
    await conn.execute(
        "INSERT INTO agent_instances (id, org_id, gateway_id, agent_uid, gateway_agent_id)"
        " SELECT a.proposed, $1, $2, a.uid, a.proposed"
        " FROM unnest($3::text[], $4::uuid[]) AS a(uid, proposed)"
        " WHERE NOT EXISTS (SELECT 1 FROM agent_deletions d"
        " WHERE d.gateway_id = $2 AND d.agent_id = a.proposed)"
        " ON CONFLICT DO NOTHING",
        org_id,
        gateway_id,
        [uid for uid, _ in adoptable],
        [agent_id for _, agent_id in adoptable],
    )


async def devices(
    conn: Any, gateway_id: uuid.UUID, secrets: SecretBox, device_id: uuid.UUID | None = None
) -> list[DeviceConfig]:
    rows = await conn.fetch(
        "SELECT * FROM devices WHERE gateway_id = $1 AND ($2::uuid IS NULL OR id = $2)"
        " ORDER BY created_at, id",
        gateway_id,
        device_id,
    )
    return [device_config(row, secrets) for row in rows]


async def claim_commands(
    conn: Any, gateway_id: uuid.UUID, command_id: uuid.UUID | None = None
) -> list[Command]:
    """Mark the gateway's open, unexpired commands SENT and return them to be sent.

    SENT ones are sent again on purpose: the gateway keeps executed ids with their results
    and answers a redelivered id without running it twice.
    """
    commands: list[Command] = []
    for table in _COMMAND_TABLES:
        device_column = "device_id" if table == "device_commands" else "NULL::uuid AS device_id"
        rows = await conn.fetch(
            f"UPDATE {table} SET status = 'SENT', sent_at = coalesce(sent_at, now())"
            " WHERE gateway_id = $1 AND ($2::uuid IS NULL OR id = $2)"
            " AND status IN ('PENDING', 'SENT') AND expires_at > now()"
            f" RETURNING id, type, payload, expires_at, created_at, {device_column}",
            gateway_id,
            command_id,
        )
        for row in sorted(rows, key=lambda r: r["created_at"]):
            commands.append(
                Command(
                    id=row["id"],
                    target="device" if row["device_id"] else "gateway",
                    command_type=row["type"],
                    payload=msgspec.json.decode(row["payload"]),
                    expires_at=row["expires_at"],
                    device_id=str(row["device_id"]) if row["device_id"] else None,
                )
            )
    return commands


async def mark_connected(
    conn: Any, gateway_id: uuid.UUID, connection_id: str, hostname: str, version: str, hello: Any
) -> None:
    await conn.execute(
        "UPDATE gateway_instances SET status = 'ONLINE', last_seen_at = now(), hostname = $2,"
        " version = $3, connected_instance = $4,"
        " last_status = coalesce(last_status, '{}'::jsonb)"
        " || jsonb_build_object('buffer', $5::jsonb)"
        " WHERE id = $1",
        gateway_id,
        hostname,
        version,
        connection_id,
        _json.encode(hello.buffer).decode(),
    )


async def mark_disconnected(conn: Any, gateway_id: uuid.UUID, connection_id: str) -> None:
    """OFFLINE, unless a newer connection of the same gateway took over meanwhile."""
    await conn.execute(
        "UPDATE gateway_instances SET status = 'OFFLINE', connected_instance = NULL"
        " WHERE id = $1 AND connected_instance = $2",
        gateway_id,
        connection_id,
    )


async def record_status(
    conn: Any, gateway_id: uuid.UUID, org_id: uuid.UUID, status: Status
) -> None:
    data = _json.encode(status).decode()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO gateway_status_snapshots (gateway_id, org_id, ts, data)"
            " VALUES ($1, $2, $3, $4)",
            gateway_id,
            org_id,
            status.ts,
            data,
        )
        await conn.execute(
            "UPDATE gateway_instances SET last_seen_at = now(), last_status = $2,"
            " status = CASE WHEN $3 THEN 'ERROR' ELSE 'ONLINE' END WHERE id = $1",
            gateway_id,
            data,
            status.fault is not None,
        )


async def touch(conn: Any, gateway_id: uuid.UUID, api_key_hash: str) -> bool:
    """last_seen_at = now, if the key is still the gateway's and it is enabled (else False)."""
    status = await conn.execute(
        "UPDATE gateway_instances SET last_seen_at = now(),"
        " status = CASE WHEN status = 'OFFLINE' THEN 'ONLINE' ELSE status END"
        " WHERE id = $1 AND api_key_hash = $2 AND disabled_at IS NULL",
        gateway_id,
        api_key_hash,
    )
    return bool(status == "UPDATE 1")


async def record_agents_seen(
    conn: Any, gateway_id: uuid.UUID, org_id: uuid.UUID, seen: AgentsSeen
) -> None:
    if not seen.agents:
        return
    proposed = proposed_agent_ids([(a.agent_uid, a.agent_id) for a in seen.agents])
    await adopt_agent_ids(conn, org_id, gateway_id, proposed)
    # The rows just adopted are filled in here; an agent an operator deleted is not brought
    # back by a gateway that has not heard of the deletion yet.
    await conn.execute(
        "INSERT INTO agent_instances (id, org_id, gateway_id, agent_uid, hostname, os, version,"
        " status, last_seen_at, gateway_agent_id)"
        " SELECT gen_random_uuid(),"
        " $1, $2, a.uid, a.hostname, a.os, a.version, 'ONLINE', a.seen, a.proposed"
        " FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],"
        " $8::uuid[]) AS a(uid, hostname, os, version, seen, proposed)"
        " WHERE NOT EXISTS (SELECT 1 FROM agent_deletions d WHERE d.gateway_id = $2"
        " AND (d.agent_id = a.proposed OR (a.proposed IS NULL AND d.agent_uid = a.uid)))"
        " ON CONFLICT (gateway_id, agent_uid) DO UPDATE SET"
        " hostname = EXCLUDED.hostname,"
        " os = coalesce(EXCLUDED.os, agent_instances.os),"
        " version = coalesce(EXCLUDED.version, agent_instances.version),"
        " last_seen_at = greatest(agent_instances.last_seen_at, EXCLUDED.last_seen_at),"
        " gateway_agent_id = coalesce(EXCLUDED.gateway_agent_id, agent_instances.gateway_agent_id),"
        " status = 'ONLINE'",
        org_id,
        gateway_id,
        [a.agent_uid for a in seen.agents],
        [a.hostname for a in seen.agents],
        [a.os for a in seen.agents],
        [a.version for a in seen.agents],
        [a.last_seen_at for a in seen.agents],
        [proposed[a.agent_uid] for a in seen.agents],
    )


async def record_policy_ack(
    conn: Any, gateway_id: uuid.UUID, org_id: uuid.UUID, ack: PolicyAck
) -> bool:
    policy_id = _uuid_or_none(ack.policy_id)
    if policy_id is None:
        return False
    status = await conn.execute(
        "INSERT INTO gateway_policy_states"
        " (gateway_id, policy_id, applied_revision, checksum, applied, reason, acked_at)"
        " SELECT $1, p.id, $3, $4, $5, $6, now() FROM policies p WHERE p.id = $2 AND p.org_id = $7"
        " ON CONFLICT (gateway_id, policy_id) DO UPDATE SET"
        " applied_revision = EXCLUDED.applied_revision, checksum = EXCLUDED.checksum,"
        " applied = EXCLUDED.applied, reason = EXCLUDED.reason, acked_at = now()",
        gateway_id,
        policy_id,
        ack.revision,
        ack.checksum,
        ack.applied,
        ack.reason,
        org_id,
    )
    return bool(status != "INSERT 0 0")


async def record_command_result(conn: Any, gateway_id: uuid.UUID, result: CommandResult) -> bool:
    """Move the command to the reported terminal state; the first terminal state wins."""
    if not result.status.is_terminal:
        return False
    for table in _COMMAND_TABLES:
        status = await conn.execute(
            f"UPDATE {table} SET status = $3, result = $4, error = $5, finished_at = now()"
            " WHERE id = $1 AND gateway_id = $2 AND status IN ('PENDING', 'SENT')",
            result.command_id,
            gateway_id,
            str(result.status),
            _json.encode(result.result).decode() if result.result is not None else None,
            result.error,
        )
        if status != "UPDATE 0":
            return True
    return False


# Text a gateway reports is cut to this; PostgreSQL text and jsonb cannot hold NUL.
MAX_ERROR_CHARS = 2000


async def record_local_command(conn: Any, gateway_id: uuid.UUID, run: LocalCommandRun) -> str:
    """Store a command the gateway ran through its local API, once per id.

    Answers "recorded", "known" (already stored: a resend) or a reason it never can be
    stored (the device is not this gateway's, an unknown type, unstorable text)."""
    device_id = _uuid_or_none(run.device_id)
    if device_id is None:
        return f"device_id {run.device_id!r} is not a device id"
    if run.command_type not in DEVICE_COMMAND_TYPES:
        return f"command_type {run.command_type!r} is not a device command"
    if not run.status.is_terminal:
        return f"status {run.status.value} is not terminal"
    payload = _json.encode(run.payload).decode()
    result = _json.encode(run.result).decode() if run.result is not None else None
    if "\\u0000" in payload or (result is not None and "\\u0000" in result):
        return "payload or result holds a NUL character"
    error = run.error.replace("\0", "")[:MAX_ERROR_CHARS] if run.error is not None else None
    inserted = await conn.fetchval(
        "INSERT INTO device_commands (id, org_id, gateway_id, device_id, type, payload, status,"
        " result, error, created_at, sent_at, finished_at, expires_at, origin)"
        " SELECT $1, d.org_id, d.gateway_id, d.id, $4, $5, $6, $7, $8, $9, $9, $10, $10, 'local'"
        " FROM devices d WHERE d.id = $2 AND d.gateway_id = $3"
        " ON CONFLICT (id) DO NOTHING RETURNING id",
        run.id,
        device_id,
        gateway_id,
        run.command_type,
        payload,
        str(run.status),
        result,
        error,
        run.created_at,
        run.finished_at,
    )
    if inserted is not None:
        return "recorded"
    mine = await conn.fetchval(
        "SELECT 1 FROM device_commands WHERE id = $1 AND gateway_id = $2", run.id, gateway_id
    )
    if mine:
        return "known"
    return f"device {device_id} is not on this gateway (or the id is taken)"


async def record_device_state(conn: Any, gateway_id: uuid.UUID, state: DeviceState) -> None:
    device_id = _uuid_or_none(state.device_id)
    if device_id is None:
        return
    await conn.execute(
        "UPDATE devices SET status = $3, status_checked_at = $4, status_info = $5,"
        " status_error = $6 WHERE id = $1 AND gateway_id = $2",
        device_id,
        gateway_id,
        "ONLINE" if state.online else "OFFLINE",
        state.checked_at,
        _json.encode(state.info).decode() if state.info is not None else None,
        state.error,
    )


MAX_SEEN_PER_GATEWAY = 1000


async def record_devices_seen(
    conn: Any, gateway_id: uuid.UUID, org_id: uuid.UUID, seen: DevicesSeen
) -> None:
    """Remember refused terminals (not those configured meanwhile), at most
    MAX_SEEN_PER_GATEWAY per gateway, the least recently seen forgotten first."""
    if not seen.devices:
        return
    columns = ("vendor", "serial", "address", "model", "firmware")
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO seen_devices (org_id, gateway_id, vendor, serial, address, model,"
            " firmware, first_seen_at, last_seen_at)"
            " SELECT $1, $2, s.vendor, s.serial, s.address, s.model, s.firmware, s.first, s.last"
            " FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
            " $8::timestamptz[], $9::timestamptz[])"
            " AS s(vendor, serial, address, model, firmware, first, last)"
            " WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.gateway_id = $2"
            " AND d.vendor = s.vendor AND d.serial = s.serial)"
            " ON CONFLICT (gateway_id, vendor, serial) DO UPDATE SET"
            " address = EXCLUDED.address, model = EXCLUDED.model, firmware = EXCLUDED.firmware,"
            " last_seen_at = greatest(seen_devices.last_seen_at, EXCLUDED.last_seen_at)",
            org_id,
            gateway_id,
            *([getattr(d, c).replace("\0", "") for d in seen.devices] for c in columns),
            [d.first_seen_at for d in seen.devices],
            [d.last_seen_at for d in seen.devices],
        )
        await conn.execute(
            "DELETE FROM seen_devices WHERE id IN (SELECT id FROM seen_devices"
            " WHERE gateway_id = $1 ORDER BY last_seen_at DESC OFFSET $2)",
            gateway_id,
            MAX_SEEN_PER_GATEWAY,
        )


async def expire_commands(conn: Any) -> list[tuple[uuid.UUID, uuid.UUID, bool]]:
    """TIMED_OUT for open commands past expires_at: (command id, gateway id, was SENT)."""
    expired = []
    for table in _COMMAND_TABLES:
        rows = await conn.fetch(
            f"WITH due AS (SELECT id, status FROM {table}"
            " WHERE status IN ('PENDING', 'SENT') AND expires_at <= now()"
            " FOR UPDATE SKIP LOCKED)"
            f" UPDATE {table} c SET status = 'TIMED_OUT', finished_at = now(),"
            " error = 'expired before the gateway reported a result'"
            " FROM due WHERE c.id = due.id RETURNING c.id, c.gateway_id, due.status AS was"
        )
        expired += [(r["id"], r["gateway_id"], r["was"] == "SENT") for r in rows]
    return expired


async def mark_stale_offline(
    conn: Any, gateway_silence: dt.timedelta, agent_silence: dt.timedelta
) -> int:
    gateways = await conn.execute(
        "UPDATE gateway_instances SET status = 'OFFLINE', connected_instance = NULL"
        " WHERE status <> 'OFFLINE'"
        " AND (last_seen_at IS NULL OR last_seen_at < now() - $1::interval)",
        gateway_silence,
    )
    await conn.execute(
        "UPDATE agent_instances SET status = 'OFFLINE'"
        " WHERE status = 'ONLINE' AND last_seen_at < now() - $1::interval",
        agent_silence,
    )
    return int(gateways.rsplit(" ", 1)[1])
