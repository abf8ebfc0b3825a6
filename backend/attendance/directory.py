"""Employees in the database: read, write their cards and workstations, tell the terminals.

Writes go through here so every change also marks the employee's recent days for the engine
and queues the matching user commands for the organisation's terminals.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped]
import msgspec

from backend.attendance.capture import BY_EMPLOYEE_ID, mark_dirty
from backend.attendance.door_events import describe
from backend.errors import Conflict, InvalidRequest, NotFound

# A workstation first linked to anyone counts from the start: its earlier logs are the
# new owner's (they were unassigned). Re-linking one counts from the moment of the change.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class EmployeeOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    employee_no: str
    name: str
    department: str | None
    status: str
    time_zone: str | None
    shift_id: uuid.UUID | None
    card_nos: list[str]
    agent_uids: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    left_at: dt.datetime | None


EMPLOYEE_SQL = """
SELECT e.*,
    array(SELECT c.card_no FROM employee_cards c WHERE c.employee_id = e.id
          ORDER BY c.card_no) AS card_nos,
    array(SELECT a.agent_uid FROM employee_agents a WHERE a.employee_id = e.id
          AND a.valid_to IS NULL ORDER BY a.agent_uid) AS agent_uids
FROM employees e
"""


def employee_out(row: Any) -> EmployeeOut:
    return EmployeeOut(
        id=row["id"],
        employee_no=row["employee_no"],
        name=row["name"],
        department=row["department"],
        status=row["status"],
        time_zone=row["time_zone"],
        shift_id=row["shift_id"],
        card_nos=list(row["card_nos"]),
        agent_uids=list(row["agent_uids"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        left_at=row["left_at"],
    )


async def read_employee(conn: Any, org_id: uuid.UUID, employee_id: uuid.UUID) -> EmployeeOut:
    row = await conn.fetchrow(
        EMPLOYEE_SQL + " WHERE e.id = $1 AND e.org_id = $2", employee_id, org_id
    )
    if row is None:
        raise NotFound(f"no employee {employee_id} in this organisation")
    return employee_out(row)


async def check_shift(conn: Any, org_id: uuid.UUID, shift_id: uuid.UUID | None) -> None:
    if shift_id is not None and not await conn.fetchval(
        "SELECT true FROM shifts WHERE id = $1 AND org_id = $2", shift_id, org_id
    ):
        raise InvalidRequest(f"shift_id: no shift {shift_id} in this organisation")


async def set_cards(conn: Any, org_id: uuid.UUID, employee_id: uuid.UUID, cards: list[str]) -> None:
    """The employee's cards become exactly `cards`; a card held by someone else is a Conflict."""
    taken = await conn.fetchrow(
        "SELECT c.card_no, e.employee_no FROM employee_cards c JOIN employees e"
        " ON e.id = c.employee_id WHERE c.org_id = $1 AND c.card_no = ANY($2::text[])"
        " AND c.employee_id <> $3 LIMIT 1",
        org_id,
        cards,
        employee_id,
    )
    if taken is not None:
        raise Conflict(
            f"card_nos: card {taken['card_no']} belongs to employee {taken['employee_no']};"
            " take it from them first"
        )
    await conn.execute(
        "DELETE FROM employee_cards WHERE employee_id = $1 AND card_no <> ALL($2::text[])",
        employee_id,
        cards,
    )
    try:
        await conn.execute(
            "INSERT INTO employee_cards (org_id, card_no, employee_id)"
            " SELECT $1, card, $3 FROM unnest($2::text[]) AS card"
            " ON CONFLICT (org_id, card_no) DO NOTHING",
            org_id,
            cards,
            employee_id,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict("card_nos: a card was just given to someone else; retry") from None
    held = await conn.fetchval(
        "SELECT count(*) FROM employee_cards WHERE employee_id = $1 AND card_no = ANY($2::text[])",
        employee_id,
        cards,
    )
    if held != len(cards):
        raise Conflict("card_nos: a card was just given to someone else; retry")


async def set_workstations(
    conn: Any, org_id: uuid.UUID, employee_id: uuid.UUID, uids: list[str]
) -> None:
    """The employee's current workstations become `uids`; removed ones keep their history."""
    taken = await conn.fetchrow(
        "SELECT a.agent_uid, e.employee_no FROM employee_agents a JOIN employees e"
        " ON e.id = a.employee_id WHERE a.org_id = $1 AND a.agent_uid = ANY($2::text[])"
        " AND a.valid_to IS NULL AND a.employee_id <> $3 LIMIT 1",
        org_id,
        uids,
        employee_id,
    )
    if taken is not None:
        raise Conflict(
            f"agent_uids: workstation {taken['agent_uid']} belongs to employee"
            f" {taken['employee_no']}; remove it there first"
        )
    await conn.execute(
        "UPDATE employee_agents SET valid_to = now() WHERE employee_id = $1"
        " AND valid_to IS NULL AND agent_uid <> ALL($2::text[])",
        employee_id,
        uids,
    )
    current = {
        row["agent_uid"]
        for row in await conn.fetch(
            "SELECT agent_uid FROM employee_agents WHERE employee_id = $1 AND valid_to IS NULL",
            employee_id,
        )
    }
    for uid in uids:
        if uid in current:
            continue
        seen_before = await conn.fetchval(
            "SELECT true FROM employee_agents WHERE org_id = $1 AND agent_uid = $2 LIMIT 1",
            org_id,
            uid,
        )
        try:
            await conn.execute(
                "INSERT INTO employee_agents (org_id, employee_id, agent_uid, valid_from)"
                " VALUES ($1, $2, $3, CASE WHEN $4 THEN now() ELSE $5 END)",
                org_id,
                employee_id,
                uid,
                bool(seen_before),
                _EPOCH,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"agent_uids: workstation {uid} was just given to someone else; retry"
            ) from None


async def employee_changed(conn: Any, org_id: uuid.UUID, employee_id: uuid.UUID) -> None:
    """Recompute the employee's recent days (shift, zone, cards or workstations changed)."""
    today = dt.datetime.now(dt.UTC).date()
    await mark_dirty(conn, org_id, [(BY_EMPLOYEE_ID, str(employee_id), today)])


class DoorEventView(Protocol):
    kind: str
    data: dict[str, Any]
    event: str | None
    employee_name: str | None


async def describe_door_events(conn: Any, org_id: uuid.UUID, logs: Sequence[DoorEventView]) -> None:
    """Fill `event` (the codes in words) and `employee_name` of the door events among `logs`:
    the employee's name here, else the name the terminal sent."""
    doors = [log for log in logs if log.kind == "device_event"]
    if not doors:
        return
    nos = sorted({str(log.data.get("employee_no") or "") for log in doors} - {""})
    cards = sorted({str(log.data.get("card_no") or "") for log in doors} - {""})
    rows = await conn.fetch(
        "SELECT e.employee_no, NULL AS card_no, e.name FROM employees e"
        " WHERE e.org_id = $1 AND e.employee_no = ANY($2::text[])"
        " UNION ALL SELECT NULL, c.card_no, e.name FROM employee_cards c"
        " JOIN employees e ON e.id = c.employee_id"
        " WHERE c.org_id = $1 AND c.card_no = ANY($3::text[])",
        org_id,
        nos,
        cards,
    )
    by_no = {row["employee_no"]: row["name"] for row in rows if row["employee_no"]}
    by_card = {row["card_no"]: row["name"] for row in rows if row["card_no"]}
    for log in doors:
        major, minor = log.data.get("major"), log.data.get("minor")
        if isinstance(major, int) and isinstance(minor, int):
            log.event = describe(major, minor)
        terminal_name = log.data.get("name")
        log.employee_name = (
            by_no.get(log.data.get("employee_no"))
            or by_card.get(log.data.get("card_no"))
            or (terminal_name if isinstance(terminal_name, str) and terminal_name else None)
        )
