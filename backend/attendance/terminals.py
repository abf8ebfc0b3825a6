"""Terminals know the people: user commands to the organisation's terminals, and what
each terminal has.

`add_user` carries the employee number, name and card numbers (with `replace`, so a
terminal that already has the user updates it). `delete_user` removes the user and their
cards. Each is an ordinary device command, so it waits for an offline gateway and ends in
a terminal state.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec

from backend.attendance.directory import EMPLOYEE_SQL, EmployeeOut, employee_out
from backend.logging import get_logger
from backend.routes.commands import CommandCreate, _create
from backend.services import Services

log = get_logger("backend.attendance")

# Longer than an ordinary command: a terminal's gateway may be offline for a while.
USER_COMMAND_EXPIRES_S = 7 * 86_400.0
# A new terminal is sent at most this many people at once (terminals hold tens of thousands
# of users; an organisation past this is told in the log, and edits enrol the rest).
MAX_ENROLLED_ON_ADD = 50_000


class TerminalState(msgspec.Struct, kw_only=True):
    device_id: uuid.UUID
    device_name: str
    # True once the last user command sent to this terminal added the employee.
    enrolled: bool
    command_id: uuid.UUID | None
    command_type: str | None
    status: str | None
    error: str | None
    updated_at: dt.datetime | None


class TerminalList(msgspec.Struct):
    items: list[TerminalState]


async def push_user(services: Services, org_id: uuid.UUID, employee: EmployeeOut) -> None:
    """Queue add_user (active) or delete_user (left) for every enabled terminal of the org
    behind an enabled gateway (a disabled gateway takes no commands: queuing one would fail
    the employee change that was already saved)."""
    async with services.connection() as conn:
        devices = await conn.fetch(
            "SELECT d.id, d.gateway_id FROM devices d"
            " JOIN gateway_instances g ON g.id = d.gateway_id AND g.disabled_at IS NULL"
            " WHERE d.org_id = $1 AND d.enabled ORDER BY d.id",
            org_id,
        )
    command = _user_command(employee)
    for device in devices:
        await _create(
            services, "device_commands", org_id, device["gateway_id"], command, device["id"]
        )


async def enrol_everyone(
    services: Services, org_id: uuid.UUID, device_id: uuid.UUID, gateway_id: uuid.UUID
) -> int:
    """Queue add_user for every active employee on a terminal just added or adopted, so a
    new door knows the staff already on file (later changes reach it through push_user)."""
    async with services.connection() as conn:
        rows = await conn.fetch(
            f"{EMPLOYEE_SQL} WHERE e.org_id = $1 AND e.status = 'active'"
            " ORDER BY e.employee_no LIMIT $2",
            org_id,
            MAX_ENROLLED_ON_ADD + 1,
        )
    if len(rows) > MAX_ENROLLED_ON_ADD:
        log.warning(
            "new terminal enrolled only part of the staff",
            device_id=str(device_id),
            enrolled=MAX_ENROLLED_ON_ADD,
        )
        rows = rows[:MAX_ENROLLED_ON_ADD]
    for row in rows:
        command = _user_command(employee_out(row))
        await _create(services, "device_commands", org_id, gateway_id, command, device_id)
    return len(rows)


def _user_command(employee: EmployeeOut) -> CommandCreate:
    if employee.status == "active":
        return CommandCreate(
            type="add_user",
            payload={
                "employee_no": employee.employee_no,
                "name": employee.name,
                "card_nos": employee.card_nos,
                "replace": True,
            },
            expires_in_s=USER_COMMAND_EXPIRES_S,
        )
    return CommandCreate(
        type="delete_user",
        payload={"employee_no": employee.employee_no},
        expires_in_s=USER_COMMAND_EXPIRES_S,
    )


async def terminal_states(conn: Any, org_id: uuid.UUID, employee_no: str) -> TerminalList:
    rows = await conn.fetch(
        "SELECT d.id AS device_id, d.name AS device_name, c.id AS command_id, c.type,"
        " c.status, c.error, coalesce(c.finished_at, c.created_at) AS updated_at"
        " FROM devices d LEFT JOIN LATERAL ("
        "   SELECT * FROM device_commands c WHERE c.device_id = d.id"
        "   AND c.type IN ('add_user', 'delete_user') AND c.payload->>'employee_no' = $2"
        "   ORDER BY c.created_at DESC, c.id DESC LIMIT 1) c ON true"
        " WHERE d.org_id = $1 ORDER BY d.name, d.id",
        org_id,
        employee_no,
    )
    return TerminalList(
        items=[
            TerminalState(
                device_id=row["device_id"],
                device_name=row["device_name"],
                enrolled=row["type"] == "add_user" and row["status"] == "SUCCESS",
                command_id=row["command_id"],
                command_type=row["type"],
                status=row["status"],
                error=row["error"],
                updated_at=row["updated_at"],
            )
            for row in rows
        ]
    )
