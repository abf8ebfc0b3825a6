"""Agent <-> gateway bodies: logs, registration and the policy an agent follows.

Wire structs never forbid unknown fields, and every field added later gets a default, so
older and newer agents, gateways and backends keep understanding each other.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MAX_LOGS_PER_REQUEST = 1000

UtcDatetime = Annotated[dt.datetime, Meta(tz=True)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
ShortText = Annotated[str, Meta(max_length=256)]
Title = Annotated[str, Meta(max_length=1024)]
Url = Annotated[str, Meta(max_length=2048)]
AgentUid = Annotated[str, Meta(min_length=1, max_length=128)]
Hostname = Annotated[str, Meta(min_length=1, max_length=255)]
ClockTime = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class _LogBase(msgspec.Struct, tag_field="kind", kw_only=True):
    id: uuid.UUID
    ts: UtcDatetime


class ActiveWindow(_LogBase, tag="active_window", kw_only=True):
    app: ShortText
    title: Title = ""
    url: Url | None = None
    duration_ms: NonNegativeInt


class Idle(_LogBase, tag="idle", kw_only=True):
    duration_ms: NonNegativeInt


class Activity(_LogBase, tag="activity", kw_only=True):
    keys: NonNegativeInt
    clicks: NonNegativeInt
    mouse_px: NonNegativeInt
    period_s: Annotated[int, Meta(gt=0, le=86_400)]


class Session(_LogBase, tag="session", kw_only=True):
    action: Literal["login", "logout", "lock", "unlock"]


class DeviceEvent(_LogBase, tag="device_event", kw_only=True):
    """An access event read from a terminal (who opened which door, when)."""

    device_id: ShortText
    serial_no: NonNegativeInt
    major: NonNegativeInt
    minor: NonNegativeInt
    employee_no: ShortText | None = None
    card_no: ShortText | None = None
    door: NonNegativeInt | None = None
    verify_mode: ShortText | None = None
    # The person's name as the terminal knows it.
    name: ShortText | None = None


Log = ActiveWindow | Idle | Activity | Session | DeviceEvent
LOG_KINDS: tuple[str, ...] = ("active_window", "idle", "activity", "session", "device_event")


class LogsRequest(msgspec.Struct):
    logs: Annotated[list[Log], Meta(max_length=MAX_LOGS_PER_REQUEST)]


class LogsResponse(msgspec.Struct):
    accepted: int


class WorkingHours(msgspec.Struct, kw_only=True):
    """One working window; weekday 0 is Monday."""

    weekday: Annotated[int, Meta(ge=0, le=6)]
    start: ClockTime
    end: ClockTime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("end must be after start")


class PolicyBody(msgspec.Struct, kw_only=True):
    """What an agent records and how often it uploads. Every field has a default."""

    idle_threshold_s: Annotated[int, Meta(ge=10, le=86_400)] = 300
    track_titles: bool = True
    track_urls: bool = False
    blocked_apps: Annotated[list[ShortText], Meta(max_length=1000)] = msgspec.field(
        default_factory=list
    )
    blocked_domains: Annotated[list[ShortText], Meta(max_length=1000)] = msgspec.field(
        default_factory=list
    )
    # Empty means no restriction: record at all hours.
    working_hours: Annotated[list[WorkingHours], Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    upload_interval_s: Annotated[int, Meta(ge=1, le=3600)] = 60
    log_batch_max: Annotated[int, Meta(ge=1, le=MAX_LOGS_PER_REQUEST)] = 500


class AgentPolicy(msgspec.Struct, kw_only=True):
    """The policy an agent gets from `GET /v1/policy` and at registration."""

    policy_id: str
    revision: int
    checksum: str
    body: PolicyBody


class RegisterRequest(msgspec.Struct, kw_only=True):
    agent_uid: AgentUid
    hostname: Hostname
    os: ShortText | None = None
    version: ShortText | None = None


class RegisterResponse(msgspec.Struct, kw_only=True):
    agent_id: str
    token: str
    policy: AgentPolicy
