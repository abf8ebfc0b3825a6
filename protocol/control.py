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
from protocol.bounds import (
    Count,
    FreeFormError,
    Measure,
    Name64,
    Revision,
    captured_free_form,
    captured_text,
    check_free_form,
)


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


# Bounds a gateway's messages must keep; a message past one is refused whole (decoding fails
# naming the field), not truncated: these values are composed by the gateway itself, so one
# past its bound is a bug or an attack, and a cut-off sentence or a silently shortened list
# would be stored as if the gateway had said it.
MAX_FAULT_CHARS = 1024
# The gateway reports its agents in chunks of this many (one message each).
MAX_AGENTS_PER_REPORT = 1000
# Any one control message, in bytes; larger frames close the connection (1009).
MAX_CONTROL_MESSAGE_BYTES = 2 * 1024 * 1024

# A W3C `traceparent` value (55 characters in version 00; later versions may append fields).
# Empty when the sender traces nothing; a malformed one is ignored by the receiver.
TraceParent = Annotated[str, Meta(max_length=256)]


def _free_form(value: dict[str, Any] | None, field: str) -> None:
    """Refuse a free-form object jsonb cannot store (msgspec reports it at the struct)."""
    if value is not None:
        try:
            check_free_form(value, field)
        except FreeFormError as exc:
            raise ValueError(str(exc)) from None


def _reported(value: dict[str, Any] | None, field: str) -> dict[str, Any] | None:
    """A terminal's or the OS's report: NUL replaced, other bounds refused (as ValueError)."""
    if value is None:
        return None
    try:
        cleaned: dict[str, Any] = captured_free_form(value, field)
    except FreeFormError as exc:
        raise ValueError(str(exc)) from None
    return cleaned


class BufferFigures(msgspec.Struct, kw_only=True):
    queue_depth: Count = 0
    queue_bytes: Count = 0
    queue_max_bytes: Count = 0
    oldest_age_s: Measure = 0.0
    dropped_total: Count = 0
    dead_letter_total: Count = 0
    # Refused logs the gateway holds for an operator, and those it could not keep.
    dead_letters: Count = 0
    dead_letter_dropped_total: Count = 0


# ---- gateway -> backend -------------------------------------------------------------------


class Hello(msgspec.Struct, tag_field="type", tag="hello", kw_only=True):
    version: ShortText
    hostname: Hostname
    # policy_id -> revision the gateway has applied; older than current means re-send.
    policy_revisions: Annotated[dict[Name64, Revision], Meta(max_length=10_000)] = msgspec.field(
        default_factory=dict
    )
    buffer: BufferFigures = msgspec.field(default_factory=BufferFigures)
    # Ids of commands the gateway has a stored result for, so SENT ones can be resolved.
    known_command_ids: Annotated[list[uuid.UUID], Meta(max_length=100_000)] = msgspec.field(
        default_factory=list
    )


class Status(msgspec.Struct, tag_field="type", tag="status", kw_only=True):
    ts: UtcDatetime
    cpu_percent: Measure = 0.0
    memory_percent: Measure = 0.0
    disk_free_bytes: Count = 0
    disk_total_bytes: Count = 0
    buffer: BufferFigures = msgspec.field(default_factory=BufferFigures)
    connected_agents: Count = 0
    upload_error_streak: Count = 0
    last_upload_at: UtcDatetime | None = None
    # A fault the operator should see (buffer near its cap, uploads failing); None when fine.
    # Refused past its bound (see MAX_FAULT_CHARS); a NUL quoted from elsewhere is replaced.
    fault: Annotated[str, Meta(max_length=MAX_FAULT_CHARS)] | None = None

    def __post_init__(self) -> None:
        self.fault = captured_text(self.fault)


class PolicyAck(msgspec.Struct, tag_field="type", tag="policy_ack", kw_only=True):
    policy_id: Name64
    revision: Revision
    checksum: Name64
    applied: bool
    reason: str | None = None

    def __post_init__(self) -> None:
        self.reason = captured_text(self.reason)


class CommandResult(msgspec.Struct, tag_field="type", tag="command_result", kw_only=True):
    command_id: uuid.UUID
    status: CommandStatus
    result: dict[str, Any] | None = None
    # Device errors quote what the terminal said: NUL replaced and cut, not refused (a
    # refused result would leave the command SENT until it times out).
    error: str | None = None
    # The span context of the gateway's run of the command, so its arrival joins the trace.
    traceparent: TraceParent = ""

    def __post_init__(self) -> None:
        self.result = _reported(self.result, "result")
        self.error = captured_text(self.error)


AgentId = Annotated[str, Meta(max_length=64)]


class AgentSeen(msgspec.Struct, kw_only=True):
    agent_uid: AgentUid
    hostname: Hostname
    last_seen_at: UtcDatetime
    os: ShortText | None = None
    version: ShortText | None = None
    # The id the gateway gave the agent at registration; the backend adopts it for a new
    # agent row, so register, /v2/agents and /v2/logs speak of one id.
    agent_id: AgentId | None = None


class AgentsSeen(msgspec.Struct, tag_field="type", tag="agents_seen", kw_only=True):
    agents: Annotated[list[AgentSeen], Meta(max_length=MAX_AGENTS_PER_REPORT)]


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

    device_id: Name64
    online: bool
    checked_at: UtcDatetime
    info: dict[str, Any] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        self.info = _reported(self.info, "info")
        self.error = captured_text(self.error)


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

    def __post_init__(self) -> None:
        # What the terminal said is kept (NUL replaced); the payload the operator sent is
        # checked by the backend, which refuses to store one it could not have accepted.
        self.result = _reported(self.result, "result")
        self.error = captured_text(self.error)


# A PEM certificate signing request or certificate: a few hundred bytes; bounded well above.
Pem = Annotated[str, Meta(min_length=1, max_length=16_384)]


class CertificateRenewal(msgspec.Struct, tag_field="type", tag="certificate_renewal", kw_only=True):
    """The gateway's client certificate has a third of its life left or less: a CSR for a
    new key, answered with `certificate_issued`. Backends without client certificates
    report it as an unknown message and keep the channel."""

    csr: Pem


GatewayMessage = (
    Hello
    | Status
    | PolicyAck
    | CommandResult
    | AgentsSeen
    | DeviceState
    | DevicesSeen
    | LocalCommandRun
    | CertificateRenewal
)


# ---- backend -> gateway -------------------------------------------------------------------


class PolicyUpdate(msgspec.Struct, tag_field="type", tag="policy_update", kw_only=True):
    policy_id: str
    revision: Revision
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
    # Travels only over the control channel; the gateway keeps it only sealed in its SQLite.
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


class AgentAccess(msgspec.Struct, tag_field="type", tag="agent_access", kw_only=True):
    """An operator's decision about one agent of the gateway.

    `revoke`: its token stops working and its uid cannot register again until `reset`;
    `reset`: the next registration of the uid is allowed without the agent's token (a
    re-imaged PC); `delete`: the gateway forgets the agent (its logs stay upstream).
    Sent when it happens and again on every connect; `changed_at` (the backend's clock)
    orders them, so a gateway applies each one once and never goes back to an older one.
    """

    agent_uid: AgentUid
    agent_id: AgentId
    action: Literal["revoke", "reset", "delete"]
    changed_at: UtcDatetime


class Command(msgspec.Struct, tag_field="type", tag="command", kw_only=True):
    id: uuid.UUID
    target: Literal["gateway", "device"]
    command_type: ShortText
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    expires_at: UtcDatetime
    device_id: str | None = None
    # The span context of its delivery: the gateway's run of it continues that trace.
    traceparent: TraceParent = ""

    def __post_init__(self) -> None:
        _free_form(self.payload, "payload")


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
    # Revoked, reset and deleted agents of this gateway, for a gateway that was away.
    agent_access: list[AgentAccess] = msgspec.field(default_factory=list)


class LocalCommandsAck(msgspec.Struct, tag_field="type", tag="local_commands_ack", kw_only=True):
    """These local commands are recorded (or can never be): stop sending them."""

    ids: Annotated[list[uuid.UUID], Meta(max_length=1000)]


class CertificateIssued(msgspec.Struct, tag_field="type", tag="certificate_issued", kw_only=True):
    """The answer to `certificate_renewal`: the new client certificate (PEM) and the CA
    that signed it. The gateway reconnects with it; the old one is refused once the new
    one has been used."""

    certificate: Pem
    ca_certificate: Pem
    not_after: dt.datetime


BackendMessage = (
    Welcome
    | PolicyUpdate
    | AgentAssignment
    | DeviceConfig
    | Command
    | CancelCommand
    | LocalCommandsAck
    | AgentAccess
    | CertificateIssued
)
