"""What the pages show, read from PostgreSQL; every query is scoped to one organisation."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from backend.attendance.directory import describe_door_events
from backend.services import Services

# A page lists at most this many rows of anything; the API pages through the rest.
PAGE_ROWS = 200
RECENT_EVENTS = 30
RECENT_COMMANDS = 20
# Access events are read from recent partitions only, so a page never scans months of logs.
EVENT_LOOKBACK = dt.timedelta(days=7)
RANGES = {
    "10min": dt.timedelta(minutes=10),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
}
MAX_SNAPSHOT_POINTS = 600

_object = msgspec.json.Decoder(dict[str, Any])


def _number(value: Any) -> float | None:
    """A figure from a gateway's report, or None when it is missing or not a number (reports
    are checked at the control channel; a page still never trusts a stored shape)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _json(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        return _object.decode(value)
    return dict(value)


@dataclass(frozen=True, slots=True)
class GatewayRow:
    id: uuid.UUID
    name: str
    status: str
    disabled: bool
    last_seen_at: dt.datetime | None
    hostname: str | None
    version: str | None
    queue_depth: float | None
    oldest_age_s: float | None
    dropped_total: float | None
    dead_letter_total: float | None
    connected_agents: float | None
    fault: str | None


def _gateway(row: Any) -> GatewayRow:
    status = _json(row["last_status"])
    buffer = status.get("buffer")
    buffer = buffer if isinstance(buffer, dict) else {}
    fault = status.get("fault")
    return GatewayRow(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        disabled=row["disabled_at"] is not None,
        last_seen_at=row["last_seen_at"],
        hostname=row["hostname"],
        version=row["version"],
        queue_depth=_number(buffer.get("queue_depth")),
        oldest_age_s=_number(buffer.get("oldest_age_s")),
        dropped_total=_number(buffer.get("dropped_total")),
        dead_letter_total=_number(buffer.get("dead_letter_total")),
        connected_agents=_number(status.get("connected_agents")),
        fault=fault if isinstance(fault, str) else None,
    )


_GATEWAY_COLUMNS = (
    "id, name, status, disabled_at, last_seen_at, hostname, version, last_status, created_at"
)


async def gateways(services: Services, org_id: uuid.UUID) -> list[GatewayRow]:
    async with services.connection() as conn:
        rows = await conn.fetch(
            f"SELECT {_GATEWAY_COLUMNS} FROM gateway_instances WHERE org_id = $1"
            " ORDER BY name, created_at, id LIMIT $2",
            org_id,
            PAGE_ROWS,
        )
    return [_gateway(row) for row in rows]


async def gateway(
    services: Services, org_id: uuid.UUID, gateway_id: uuid.UUID
) -> GatewayRow | None:
    async with services.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT {_GATEWAY_COLUMNS} FROM gateway_instances WHERE org_id = $1 AND id = $2",
            org_id,
            gateway_id,
        )
    return _gateway(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class Sample:
    at: dt.datetime
    queue_depth: float
    cpu_percent: float
    memory_percent: float
    disk_used_percent: float


async def samples(
    services: Services, org_id: uuid.UUID, gateway_id: uuid.UUID, span: dt.timedelta
) -> list[Sample]:
    """Status reports received in the last `span`, oldest first, thinned to a chartable count."""
    async with services.connection() as conn:
        rows = await conn.fetch(
            "SELECT received_at, data FROM gateway_status_snapshots"
            " WHERE gateway_id = $1 AND org_id = $2 AND received_at > now() - $3::interval"
            " ORDER BY received_at DESC, id DESC LIMIT $4",
            gateway_id,
            org_id,
            span,
            MAX_SNAPSHOT_POINTS * 20,
        )
    step = max(1, len(rows) // MAX_SNAPSHOT_POINTS)
    out = []
    for row in reversed(rows[::step]):
        data = _json(row["data"])
        buffer = data.get("buffer")
        total = _number(data.get("disk_total_bytes")) or 0.0
        free = _number(data.get("disk_free_bytes")) or 0.0
        out.append(
            Sample(
                at=row["received_at"],
                queue_depth=_number(buffer.get("queue_depth") if isinstance(buffer, dict) else 0)
                or 0.0,
                cpu_percent=_number(data.get("cpu_percent")) or 0.0,
                memory_percent=_number(data.get("memory_percent")) or 0.0,
                disk_used_percent=100.0 * (total - free) / total if total > 0 else 0.0,
            )
        )
    return out


async def agents(services: Services, org_id: uuid.UUID, gateway_id: uuid.UUID) -> list[Any]:
    async with services.connection() as conn:
        return list(
            await conn.fetch(
                "SELECT id, agent_uid, hostname, os, version, status, last_seen_at"
                " FROM agent_instances WHERE org_id = $1 AND gateway_id = $2"
                " ORDER BY last_seen_at DESC, id LIMIT $3",
                org_id,
                gateway_id,
                PAGE_ROWS,
            )
        )


@dataclass(frozen=True, slots=True)
class CommandRow:
    kind: str  # "gateway" or "device": which table, and which page URL polls it
    id: uuid.UUID
    owner_id: uuid.UUID  # the gateway, or the device
    owner_name: str
    type: str
    status: str
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def terminal(self) -> bool:
        return self.status not in ("PENDING", "SENT")


def command_row(kind: str, row: Any, owner_name: str = "") -> CommandRow:
    return CommandRow(
        kind=kind,
        id=row["id"],
        owner_id=row["device_id"] if kind == "device" else row["gateway_id"],
        owner_name=owner_name,
        type=row["type"],
        status=row["status"],
        error=row["error"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


async def gateway_commands(
    services: Services, org_id: uuid.UUID, gateway_id: uuid.UUID
) -> list[CommandRow]:
    async with services.connection() as conn:
        rows = await conn.fetch(
            "SELECT * FROM gateway_commands WHERE org_id = $1 AND gateway_id = $2"
            " ORDER BY created_at DESC, id DESC LIMIT $3",
            org_id,
            gateway_id,
            RECENT_COMMANDS,
        )
    return [command_row("gateway", row) for row in rows]


async def failed_commands(
    services: Services, org_id: uuid.UUID, since: dt.timedelta
) -> list[CommandRow]:
    """Gateway and device commands that ended badly within `since`, newest first."""
    async with services.connection() as conn:
        gateway_rows = await conn.fetch(
            "SELECT c.*, g.name AS owner_name FROM gateway_commands c"
            " JOIN gateway_instances g ON g.id = c.gateway_id"
            " WHERE c.org_id = $1 AND c.status IN ('FAILED', 'TIMED_OUT')"
            " AND c.finished_at > now() - $2::interval"
            " ORDER BY c.finished_at DESC LIMIT $3",
            org_id,
            since,
            RECENT_COMMANDS,
        )
        device_rows = await conn.fetch(
            "SELECT c.*, d.name AS owner_name FROM device_commands c"
            " JOIN devices d ON d.id = c.device_id"
            " WHERE c.org_id = $1 AND c.status IN ('FAILED', 'TIMED_OUT')"
            " AND c.finished_at > now() - $2::interval"
            " ORDER BY c.finished_at DESC LIMIT $3",
            org_id,
            since,
            RECENT_COMMANDS,
        )
    rows = [command_row("gateway", r, r["owner_name"]) for r in gateway_rows]
    rows += [command_row("device", r, r["owner_name"]) for r in device_rows]
    rows.sort(key=lambda c: c.finished_at or c.created_at, reverse=True)
    return rows[:RECENT_COMMANDS]


@dataclass(frozen=True, slots=True)
class DoorRow:
    id: uuid.UUID
    name: str
    gateway_id: uuid.UUID
    gateway_name: str
    vendor: str
    host: str
    port: int
    enabled: bool
    status: str
    status_checked_at: dt.datetime | None
    status_error: str | None


_DOOR_SQL = (
    "SELECT d.id, d.name, d.gateway_id, g.name AS gateway_name, d.vendor, d.host,"
    " d.port, d.enabled, d.status, d.status_checked_at, d.status_error"
    " FROM devices d JOIN gateway_instances g ON g.id = d.gateway_id"
)


async def doors(services: Services, org_id: uuid.UUID) -> list[DoorRow]:
    async with services.connection() as conn:
        rows = await conn.fetch(
            f"{_DOOR_SQL} WHERE d.org_id = $1 ORDER BY d.name, d.created_at, d.id LIMIT $2",
            org_id,
            PAGE_ROWS,
        )
    return [DoorRow(**dict(row)) for row in rows]


async def door(services: Services, org_id: uuid.UUID, device_id: uuid.UUID) -> DoorRow | None:
    async with services.connection() as conn:
        row = await conn.fetchrow(
            f"{_DOOR_SQL} WHERE d.org_id = $1 AND d.id = $2", org_id, device_id
        )
    return DoorRow(**dict(row)) if row is not None else None


@dataclass(slots=True)
class AccessEvent:
    """One door event; `event` and `employee_name` are filled by describe_door_events."""

    at: dt.datetime
    data: dict[str, Any]
    kind: str = "device_event"
    event: str | None = None
    employee_name: str | None = None

    @property
    def device_id(self) -> str:
        return str(self.data.get("device_id", ""))


async def access_events(
    services: Services, org_id: uuid.UUID, device_id: uuid.UUID | None = None
) -> list[AccessEvent]:
    """The latest access events of the organisation (or of one terminal), newest first, in
    words and with the person's name where the employee or card is known."""
    where = "org_id = $1 AND kind = 'device_event' AND ts > now() - $2::interval"
    args: list[Any] = [org_id, EVENT_LOOKBACK, RECENT_EVENTS]
    if device_id is not None:
        args.append(f"device:{device_id}")
        where += f" AND agent_uid = ${len(args)}"
    async with services.connection() as conn:
        rows = await conn.fetch(
            f"SELECT ts, data FROM agent_logs WHERE {where} ORDER BY ts DESC, id DESC LIMIT $3",
            *args,
        )
        events = [AccessEvent(at=row["ts"], data=_json(row["data"])) for row in rows]
        await describe_door_events(conn, org_id, events)
    return events
