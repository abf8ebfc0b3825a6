"""WebSocket control messages (`GET /v2/gateways/control`): one tagged union per direction.

Every message is a msgspec Struct tagged on `type`. Decode into the union, then `match`.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from protocol.agent import AgentUid, Hostname, PolicyBody, ShortText, UtcDatetime


class CommandStatus(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self not in (CommandStatus.PENDING, CommandStatus.SENT)


GATEWAY_COMMAND_TYPES: tuple[str, ...] = ("ping", "flush", "sync_policy", "restart", "discover")
DEVICE_COMMAND_TYPES: tuple[str, ...] = (
    "open_door",
    "close_door",
    "always_open",
    "always_close",
    "reboot",
    "get_info",
    "get_status",
    "sync_time",
    "add_user",
    "delete_user",
)


class BufferFigures(msgspec.Struct, kw_only=True):
    queue_depth: int = 0
    queue_bytes: int = 0
    queue_max_bytes: int = 0
    oldest_age_s: float = 0.0
    dropped_total: int = 0
    dead_letter_total: int = 0


# ---- gateway -> backend -------------------------------------------------------------------


class Hello(msgspec.Struct, tag_field="type", tag="hello", kw_only=True):
    version: ShortText
    hostname: Hostname
    # policy_id -> revision the gateway has applied; older than current means re-send.
    policy_revisions: dict[str, int] = msgspec.field(default_factory=dict)
    buffer: BufferFigures = msgspec.field(default_factory=BufferFigures)
    # Ids of commands the gateway has a stored result for, so SENT ones can be resolved.
    known_command_ids: list[uuid.UUID] = msgspec.field(default_factory=list)


class Status(msgspec.Struct, tag_field="type", tag="status", kw_only=True):
    ts: UtcDatetime
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    disk_free_bytes: int = 0
    disk_total_bytes: int = 0
    buffer: BufferFigures = msgspec.field(default_factory=BufferFigures)
    connected_agents: int = 0
    upload_error_streak: int = 0
    last_upload_at: UtcDatetime | None = None
    # A fault the operator should see (buffer near its cap, uploads failing); None when fine.
    fault: str | None = None


class PolicyAck(msgspec.Struct, tag_field="type", tag="policy_ack", kw_only=True):
    policy_id: str
    revision: int
    checksum: str
    applied: bool
    reason: str | None = None


class CommandResult(msgspec.Struct, tag_field="type", tag="command_result", kw_only=True):
    command_id: uuid.UUID
    status: CommandStatus
    result: dict[str, Any] | None = None
    error: str | None = None


class AgentSeen(msgspec.Struct, kw_only=True):
    agent_uid: AgentUid
    hostname: Hostname
    last_seen_at: UtcDatetime
    os: ShortText | None = None
    version: ShortText | None = None


class AgentsSeen(msgspec.Struct, tag_field="type", tag="agents_seen", kw_only=True):
    agents: Annotated[list[AgentSeen], Meta(max_length=10_000)]


class SeenDevice(msgspec.Struct, kw_only=True):
    """A terminal that reached the gateway but is not configured on it (refused so far)."""

    vendor: ShortText
    serial: ShortText
    address: ShortText = ""
    model: ShortText = ""
    firmware: ShortText = ""
    first_seen_at: UtcDatetime
    last_seen_at: UtcDatetime


class DevicesSeen(msgspec.Struct, tag_field="type", tag="devices_seen", kw_only=True):
    devices: Annotated[list[SeenDevice], Meta(max_length=1000)]


class DeviceState(msgspec.Struct, tag_field="type", tag="device_state", kw_only=True):
    """A device's health as the gateway last saw it (polled device info)."""

    device_id: str
    online: bool
    checked_at: UtcDatetime
    info: dict[str, Any] | None = None
    error: str | None = None


class LocalCommandRun(msgspec.Struct, tag_field="type", tag="local_command", kw_only=True):
    """A device command an operator ran through the gateway's local API; the id is the
    gateway's. Sent until the backend acknowledges it (`local_commands_ack`)."""

    id: uuid.UUID
    device_id: ShortText
    command_type: ShortText
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    status: CommandStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: UtcDatetime
    finished_at: UtcDatetime


GatewayMessage = (
    Hello
    | Status
    | PolicyAck
    | CommandResult
    | AgentsSeen
    | DeviceState
    | DevicesSeen
    | LocalCommandRun
)


# ---- backend -> gateway -------------------------------------------------------------------


class PolicyUpdate(msgspec.Struct, tag_field="type", tag="policy_update", kw_only=True):
    policy_id: str
    revision: int
    checksum: str
    body: PolicyBody
    is_default: bool = False


class AgentAssignment(msgspec.Struct, tag_field="type", tag="agent_assignment", kw_only=True):
    agent_uid: AgentUid
    # None: the agent follows the organisation's default policy.
    policy_id: str | None = None


class DeviceConfig(msgspec.Struct, tag_field="type", tag="device_config", kw_only=True):
    device_id: str
    vendor: ShortText
    name: ShortText
    # Empty for terminals that connect to the gateway (zkteco): they are known by `serial`.
    host: ShortText = ""
    port: Annotated[int, Meta(ge=1, le=65535)] = 80
    username: ShortText = ""
    # Travels only over the control channel; the gateway keeps it only in its SQLite.
    password: str = ""
    scheme: Literal["http", "https"] = "http"
    enabled: bool = True
    deleted: bool = False
    serial: ShortText = ""
    # IANA zone of the terminal's clock, for terminals that report local wall-clock time.
    time_zone: ShortText = "UTC"

    def __repr__(self) -> str:
        # Configs end up in log lines and tracebacks; the password must not.
        return (
            f"DeviceConfig(device_id={self.device_id!r}, vendor={self.vendor!r},"
            f" host={self.host!r}, port={self.port}, serial={self.serial!r},"
            f" username={self.username!r},"
            f" password='***', enabled={self.enabled}, deleted={self.deleted})"
        )


class Command(msgspec.Struct, tag_field="type", tag="command", kw_only=True):
    id: uuid.UUID
    target: Literal["gateway", "device"]
    command_type: ShortText
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    expires_at: UtcDatetime
    device_id: str | None = None


class CancelCommand(msgspec.Struct, tag_field="type", tag="cancel_command", kw_only=True):
    id: uuid.UUID


class Welcome(msgspec.Struct, tag_field="type", tag="welcome", kw_only=True):
    gateway_id: str
    enrollment_key: str
    heartbeat_interval_s: Annotated[float, Meta(gt=0)] = 15.0
    policies: list[PolicyUpdate] = msgspec.field(default_factory=list)
    assignments: list[AgentAssignment] = msgspec.field(default_factory=list)
    devices: list[DeviceConfig] = msgspec.field(default_factory=list)
    server_time: dt.datetime | None = None


class LocalCommandsAck(msgspec.Struct, tag_field="type", tag="local_commands_ack", kw_only=True):
    """These local commands are recorded (or can never be): stop sending them."""

    ids: Annotated[list[uuid.UUID], Meta(max_length=1000)]


BackendMessage = (
    Welcome
    | PolicyUpdate
    | AgentAssignment
    | DeviceConfig
    | Command
    | CancelCommand
    | LocalCommandsAck
)
