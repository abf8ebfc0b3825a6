"""Who an employee is to the engine and the reports: zone, shift, cards, workstations."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from backend.attendance.rules import ShiftRule


@functools.cache
def known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def zone(name: str) -> ZoneInfo:
    """The zone `name`, or UTC for a name this machine no longer knows."""
    if name in known_zones():
        return ZoneInfo(name)
    return ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Workstation:
    agent_uid: str
    valid_from: dt.datetime
    valid_to: dt.datetime | None

    def held_at(self, instant: dt.datetime) -> bool:
        return self.valid_from <= instant and (self.valid_to is None or instant < self.valid_to)


@dataclass(slots=True)
class Person:
    id: uuid.UUID
    org_id: uuid.UUID
    employee_no: str
    name: str
    department: str | None
    status: str
    zone: ZoneInfo
    shift_id: uuid.UUID | None
    shift: ShiftRule | None
    left_at: dt.datetime | None
    cards: list[str] = field(default_factory=list)
    workstations: list[Workstation] = field(default_factory=list)

    def last_day(self) -> dt.date | None:
        """The last local date the employee is reported on (None while employed)."""
        return self.left_at.astimezone(self.zone).date() if self.left_at else None


PEOPLE_SQL = """
SELECT e.id, e.org_id, e.employee_no, e.name, e.department, e.status, e.left_at,
       coalesce(e.time_zone, o.time_zone) AS zone_name,
       s.id AS shift_id, s.start_time, s.end_time, s.working_days, s.late_grace_s,
       s.early_grace_s, s.min_punch_gap_s,
       array(SELECT c.card_no FROM employee_cards c WHERE c.employee_id = e.id) AS cards
FROM employees e
JOIN organizations o ON o.id = e.org_id
LEFT JOIN shifts s ON s.id = coalesce(e.shift_id, o.default_shift_id)
"""


def shift_rule(row: Any) -> ShiftRule | None:
    if row["shift_id"] is None:
        return None
    return ShiftRule(
        start=row["start_time"],
        end=row["end_time"],
        working_days=frozenset(row["working_days"]),
        late_grace_s=row["late_grace_s"],
        early_grace_s=row["early_grace_s"],
        min_punch_gap_s=row["min_punch_gap_s"],
    )


def person_from(row: Any) -> Person:
    return Person(
        id=row["id"],
        org_id=row["org_id"],
        employee_no=row["employee_no"],
        name=row["name"],
        department=row["department"],
        status=row["status"],
        zone=zone(row["zone_name"]),
        shift_id=row["shift_id"],
        shift=shift_rule(row),
        left_at=row["left_at"],
        cards=list(row["cards"]),
    )


async def attach_workstations(conn: Any, people: Iterable[Person]) -> None:
    by_id = {person.id: person for person in people}
    if not by_id:
        return
    rows = await conn.fetch(
        "SELECT employee_id, agent_uid, valid_from, valid_to FROM employee_agents"
        " WHERE employee_id = ANY($1::uuid[]) ORDER BY valid_from",
        list(by_id),
    )
    for row in rows:
        by_id[row["employee_id"]].workstations.append(
            Workstation(row["agent_uid"], row["valid_from"], row["valid_to"])
        )


async def load_people(conn: Any, employee_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Person]:
    ids = list(employee_ids)
    rows = await conn.fetch(PEOPLE_SQL + " WHERE e.id = ANY($1::uuid[])", ids)
    people = {row["id"]: person_from(row) for row in rows}
    await attach_workstations(conn, people.values())
    return people
