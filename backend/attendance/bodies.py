"""Request bodies of the people and attendance routes, decoded and checked at the edge."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from backend.attendance.people import known_zones
from backend.errors import InvalidRequest

T = TypeVar("T")

EmployeeNo = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
PersonName = Annotated[str, Meta(min_length=1, max_length=128)]
Department = Annotated[str, Meta(min_length=1, max_length=128)]
CardNo = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9]+$")]
AgentUidText = Annotated[str, Meta(min_length=1, max_length=128)]
ZoneName = Annotated[str, Meta(min_length=1, max_length=64)]
ShiftName = Annotated[str, Meta(min_length=1, max_length=200)]
ClockTime = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
GraceSeconds = Annotated[int, Meta(ge=0, le=12 * 3600)]
GapSeconds = Annotated[int, Meta(ge=0, le=3600)]
Weekday = Annotated[int, Meta(ge=0, le=6)]
CardList = Annotated[list[CardNo], Meta(max_length=10)]
AgentList = Annotated[list[AgentUidText], Meta(max_length=20)]
EmployeeStatus = Literal["active", "left"]


def _no_nul(**fields: Any) -> None:
    """PostgreSQL text cannot hold NUL: refuse it by field name."""
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise ValueError(f"{name} may not contain a NUL character")


def check_zone(name: str, field: str = "time_zone") -> str:
    if name not in known_zones():
        raise InvalidRequest(
            f"{field}: {name!r} is not an IANA time zone name (e.g. Europe/Berlin)"
        )
    return name


def _distinct(name: str, values: list[str]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name} lists a value twice")


class EmployeeCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    employee_no: EmployeeNo
    name: PersonName
    department: Department | None = None
    time_zone: ZoneName | None = None
    shift_id: uuid.UUID | None = None
    card_nos: CardList = msgspec.field(default_factory=list)
    agent_uids: AgentList = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _no_nul(name=self.name, department=self.department, agent_uids=self.agent_uids)
        _distinct("card_nos", self.card_nos)
        _distinct("agent_uids", self.agent_uids)


class EmployeeChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: PersonName | UnsetType = UNSET
    department: Department | UnsetType | None = UNSET
    time_zone: ZoneName | UnsetType | None = UNSET
    shift_id: uuid.UUID | UnsetType | None = UNSET
    status: EmployeeStatus | UnsetType = UNSET
    card_nos: CardList | UnsetType = UNSET
    agent_uids: AgentList | UnsetType = UNSET

    def __post_init__(self) -> None:
        _no_nul(name=self.name, department=self.department, agent_uids=self.agent_uids)
        if isinstance(self.card_nos, list):
            _distinct("card_nos", self.card_nos)
        if isinstance(self.agent_uids, list):
            _distinct("agent_uids", self.agent_uids)


class ShiftCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: ShiftName
    start: ClockTime
    # May be at or before `start`: the shift then ends the next day.
    end: ClockTime
    working_days: Annotated[list[Weekday], Meta(min_length=0, max_length=7)] = msgspec.field(
        default_factory=lambda: [0, 1, 2, 3, 4]
    )
    late_grace_s: GraceSeconds = 0
    early_grace_s: GraceSeconds = 0
    min_punch_gap_s: GapSeconds = 60

    def __post_init__(self) -> None:
        _no_nul(name=self.name)
        if self.start == self.end:
            raise ValueError("end must differ from start (a shift cannot last 0 or 24 h)")
        _distinct("working_days", [str(d) for d in self.working_days])


class ShiftChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: ShiftName | UnsetType = UNSET
    start: ClockTime | UnsetType = UNSET
    end: ClockTime | UnsetType = UNSET
    working_days: Annotated[list[Weekday], Meta(max_length=7)] | UnsetType = UNSET
    late_grace_s: GraceSeconds | UnsetType = UNSET
    early_grace_s: GraceSeconds | UnsetType = UNSET
    min_punch_gap_s: GapSeconds | UnsetType = UNSET

    def __post_init__(self) -> None:
        _no_nul(name=self.name)
        if isinstance(self.working_days, list):
            _distinct("working_days", [str(d) for d in self.working_days])


class OrganizationChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    time_zone: ZoneName | UnsetType = UNSET
    default_shift_id: uuid.UUID | UnsetType | None = UNSET
    require_client_certificate: bool | UnsetType = UNSET


def decode(raw: bytes, kind: type[T]) -> T:
    """`raw` JSON as `kind`; InvalidRequest names the field that is wrong."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason, _, where = text.rpartition(" - at `$.")
        if where:
            raise InvalidRequest(f"{where.rstrip('`')}: {reason}") from None
        raise InvalidRequest(text) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"body: not valid JSON ({exc})") from None


def clock(text: str) -> dt.time:
    return dt.time.fromisoformat(text)
