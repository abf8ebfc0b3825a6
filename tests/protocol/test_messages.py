from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codec, storable
from protocol.agent import (
    MAX_LOGS_PER_REQUEST,
    ActiveWindow,
    Activity,
    AgentPolicy,
    DeviceEvent,
    Idle,
    LogsRequest,
    LogsResponse,
    PolicyBody,
    RegisterRequest,
    RegisterResponse,
    Session,
    WorkingHours,
)
from protocol.codec import ProtocolError
from protocol.control import (
    MAX_AGENTS_PER_REPORT,
    MAX_FAULT_CHARS,
    AgentAssignment,
    AgentSeen,
    AgentsSeen,
    BackendMessage,
    BufferFigures,
    CancelCommand,
    Command,
    CommandResult,
    CommandStatus,
    DeviceConfig,
    DeviceState,
    GatewayMessage,
    Hello,
    PolicyAck,
    PolicyUpdate,
    Status,
    Welcome,
)
from protocol.uplink import AgentLogs, IngestResponse, UplinkBatch

NOW = dt.datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=dt.UTC)


def some_logs() -> list[Any]:
    return [
        ActiveWindow(id=uuid.uuid4(), ts=NOW, app="excel.exe", title="Q4", duration_ms=1500),
        ActiveWindow(
            id=uuid.uuid4(), ts=NOW, app="chrome", title="x", url="https://a.b", duration_ms=0
        ),
        Idle(id=uuid.uuid4(), ts=NOW, duration_ms=60_000),
        Activity(id=uuid.uuid4(), ts=NOW, keys=10, clicks=2, mouse_px=300, period_s=60),
        Session(id=uuid.uuid4(), ts=NOW, action="lock"),
        DeviceEvent(
            id=uuid.uuid4(),
            ts=NOW,
            device_id="dev-1",
            serial_no=42,
            major=5,
            minor=75,
            employee_no="1001",
            door=1,
            verify_mode="face",
        ),
    ]


POLICY = PolicyBody(
    blocked_apps=["steam.exe"],
    working_hours=[WorkingHours(weekday=0, start="09:00", end="18:00")],
)

AGENT_MESSAGES: list[Any] = [
    LogsRequest(logs=some_logs()[:-1]),  # agents send no device events
    LogsResponse(accepted=6),
    RegisterRequest(agent_uid="ws-001", hostname="pc-1", os="Windows 11", version="1.2.0"),
    RegisterResponse(
        agent_id="a1",
        token="t",
        policy=AgentPolicy(
            policy_id="p1", revision=3, checksum=codec.policy_checksum(POLICY), body=POLICY
        ),
    ),
    UplinkBatch(
        batch_id=uuid.uuid4(),
        gateway_id="g1",
        created_at=NOW,
        groups=[AgentLogs(agent_uid="ws-001", logs=some_logs())],
    ),
    IngestResponse(accepted=5, duplicates=1),
]

GATEWAY_MESSAGES: list[Any] = [
    Hello(
        version="0.1.0",
        hostname="edge-1",
        policy_revisions={"p1": 2},
        buffer=BufferFigures(queue_depth=3),
        known_command_ids=[uuid.uuid4()],
    ),
    Status(ts=NOW, cpu_percent=12.5, buffer=BufferFigures(queue_bytes=10), fault="uploads failing"),
    PolicyAck(policy_id="p1", revision=2, checksum="abc", applied=False, reason="checksum"),
    CommandResult(command_id=uuid.uuid4(), status=CommandStatus.SUCCESS, result={"pong": True}),
    AgentsSeen(agents=[AgentSeen(agent_uid="ws-1", hostname="pc", last_seen_at=NOW)]),
    DeviceState(device_id="d1", online=False, checked_at=NOW, error="connection refused"),
]

BACKEND_MESSAGES: list[Any] = [
    Welcome(
        gateway_id="g1",
        enrollment_key="ek",
        policies=[PolicyUpdate(policy_id="p1", revision=1, checksum="c", body=POLICY)],
        assignments=[AgentAssignment(agent_uid="ws-1", policy_id=None)],
        devices=[
            DeviceConfig(
                device_id="d1",
                vendor="hikvision",
                name="door",
                host="127.0.0.1",
                port=80,
                username="admin",
                password="pw",
            )
        ],
    ),
    PolicyUpdate(policy_id="p1", revision=2, checksum="c", body=POLICY, is_default=True),
    AgentAssignment(agent_uid="ws-1", policy_id="p2"),
    Command(
        id=uuid.uuid4(),
        target="device",
        device_id="d1",
        command_type="open_door",
        payload={"door": 1},
        expires_at=NOW,
    ),
    CancelCommand(id=uuid.uuid4()),
]


def _decoder_for(message: Any) -> Any:
    if type(message) in {type(m) for m in GATEWAY_MESSAGES}:
        return GatewayMessage
    if type(message) in {type(m) for m in BACKEND_MESSAGES}:
        return BackendMessage
    return type(message)


@pytest.mark.parametrize(
    "message",
    AGENT_MESSAGES + GATEWAY_MESSAGES + BACKEND_MESSAGES,
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("content_type", [codec.JSON, codec.MSGPACK])
def test_round_trip(message: Any, content_type: str) -> None:
    decoder = codec.Codec[Any](_decoder_for(message))
    data = codec.encode(message, content_type)
    assert decoder.decode(data, content_type) == message


def test_every_command_status_round_trips() -> None:
    for status in CommandStatus:
        result = CommandResult(command_id=uuid.uuid4(), status=status)
        decoded = codec.gateway_message.decode_json(codec.encode(result))
        assert isinstance(decoded, CommandResult)
        assert decoded.status is status
    assert {s for s in CommandStatus if s.is_terminal} == {
        CommandStatus.SUCCESS,
        CommandStatus.FAILED,
        CommandStatus.TIMED_OUT,
        CommandStatus.CANCELED,
    }


def _logs_body(**overrides: Any) -> dict[str, Any]:
    good: dict[str, Any] = {
        "kind": "idle",
        "id": str(uuid.uuid4()),
        "ts": "2026-11-26T10:00:00Z",
        "duration_ms": 10,
    }
    bad = {**good, "id": str(uuid.uuid4()), **overrides}
    return {"logs": [good, bad]}


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        (_logs_body(ts=12), "$.logs[1].ts", "datetime"),
        (_logs_body(ts="2026-11-26T10:00:00"), "$.logs[1].ts", "timezone"),
        (_logs_body(id="not-a-uuid"), "$.logs[1].id", "uuid"),
        (_logs_body(duration_ms=-5), "$.logs[1].duration_ms", ">= 0"),
        (_logs_body(kind="keylogger"), "$.logs[1].kind", "keylogger"),
        (
            {"logs": [{"kind": "idle", "id": str(uuid.uuid4()), "duration_ms": 1}]},
            "$.logs[0]",
            "ts",
        ),
        (
            {
                "logs": [
                    {
                        "kind": "active_window",
                        "id": str(uuid.uuid4()),
                        "ts": "2026-11-26T10:00:00Z",
                        "app": "x" * 257,
                        "duration_ms": 1,
                    }
                ]
            },
            "$.logs[0].app",
            "length",
        ),
        (
            {
                "logs": [
                    {
                        "kind": "session",
                        "id": str(uuid.uuid4()),
                        "ts": "2026-11-26T10:00:00Z",
                        "action": "reboot",
                    }
                ]
            },
            "$.logs[0].action",
            "reboot",
        ),
        ({"logs": "nope"}, "$.logs", "array"),
        ({}, "$", "logs"),
    ],
)
@pytest.mark.parametrize("content_type", [codec.JSON, codec.MSGPACK])
def test_bad_logs_name_the_field(
    body: dict[str, Any], path: str, reason: str, content_type: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.logs_request.decode(codec.encode(body, content_type), content_type)
    assert info.value.path == path
    assert reason.lower() in info.value.reason.lower()
    assert str(info.value).startswith(f"{path}: ")


def test_too_many_logs() -> None:
    one = _logs_body()["logs"][0]
    body = {"logs": [dict(one, id=str(uuid.uuid4())) for _ in range(MAX_LOGS_PER_REQUEST + 1)]}
    with pytest.raises(ProtocolError) as info:
        codec.logs_request.decode_json(codec.encode(body))
    assert info.value.path == "$.logs"
    assert str(MAX_LOGS_PER_REQUEST) in info.value.reason
    body["logs"].pop()
    assert len(codec.logs_request.decode_json(codec.encode(body)).logs) == MAX_LOGS_PER_REQUEST


def test_malformed_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as info:
        codec.logs_request.decode_json(b'{"logs": [')
    assert info.value.path == "$"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"idle_threshold_s": 1}, "$.idle_threshold_s"),
        ({"upload_interval_s": 0}, "$.upload_interval_s"),
        ({"log_batch_max": 5000}, "$.log_batch_max"),
        (
            {"working_hours": [{"weekday": 7, "start": "09:00", "end": "17:00"}]},
            "$.working_hours[0].weekday",
        ),
        (
            {"working_hours": [{"weekday": 1, "start": "9am", "end": "17:00"}]},
            "$.working_hours[0].start",
        ),
        (
            {"working_hours": [{"weekday": 1, "start": "18:00", "end": "17:00"}]},
            "$.working_hours[0]",
        ),
    ],
)
def test_bad_policy_body_names_the_field(body: dict[str, Any], path: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.convert_policy_body(body)
    assert info.value.path == path


def test_unknown_fields_are_ignored_and_defaults_fill_in() -> None:
    log = {
        "kind": "idle",
        "id": str(uuid.uuid4()),
        "ts": "2026-11-26T10:00:00+02:00",
        "duration_ms": 5,
        "added_in_a_later_version": {"x": 1},
    }
    decoded = codec.logs_request.decode_json(codec.encode({"logs": [log], "extra": True}))
    assert isinstance(decoded.logs[0], Idle)
    assert decoded.logs[0].duration_ms == 5

    # An older peer leaves out fields that have defaults.
    hello = codec.gateway_message.decode_json(b'{"type":"hello","version":"0.0.1","hostname":"h"}')
    assert isinstance(hello, Hello)
    assert hello.policy_revisions == {}
    assert hello.buffer == BufferFigures()
    assert codec.policy_body.decode_json(b"{}") == PolicyBody()


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    for decoder in (
        codec.logs_request,
        codec.register_request,
        codec.uplink_batch,
        codec.gateway_message,
        codec.backend_message,
    ):
        for decode in (decoder.decode_json, decoder.decode_msgpack):
            with contextlib.suppress(ProtocolError):
                decode(data)


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none()),
    )
)
def test_arbitrary_json_objects_raise_only_protocol_error(obj: dict[str, Any]) -> None:
    for content_type in (codec.JSON, codec.MSGPACK):
        data = codec.encode({"logs": [dict(obj, kind="idle")]}, content_type)
        with contextlib.suppress(ProtocolError):
            codec.logs_request.decode(data, content_type)


def test_checksum_is_stable_across_ordering_and_encodings() -> None:
    raw = msgspec.to_builtins(POLICY)
    reordered = dict(reversed(list(raw.items())))
    from_json = codec.policy_body.decode_json(msgspec.json.encode(reordered))
    from_msgpack = codec.policy_body.decode_msgpack(msgspec.msgpack.encode(raw))
    checksum = codec.policy_checksum(POLICY)
    assert codec.policy_checksum(from_json) == checksum
    assert codec.policy_checksum(from_msgpack) == checksum
    assert codec.policy_checksum(codec.convert_policy_body(reordered)) == checksum
    assert len(checksum) == 64
    changed = msgspec.structs.replace(POLICY, track_urls=not POLICY.track_urls)
    assert codec.policy_checksum(changed) != checksum
    # Defaults spelled out or left out describe the same policy.
    assert codec.policy_checksum(codec.convert_policy_body({})) == codec.policy_checksum(
        codec.convert_policy_body(msgspec.to_builtins(PolicyBody()))
    )


def test_content_type_selects_msgpack() -> None:
    assert codec.is_msgpack("application/msgpack")
    assert codec.is_msgpack("Application/MsgPack; charset=binary")
    assert not codec.is_msgpack("application/json")
    assert not codec.is_msgpack(None)


def test_device_config_repr_hides_the_password() -> None:
    config = DeviceConfig(
        device_id="d1",
        vendor="hikvision",
        name="door",
        host="10.0.0.5",
        port=80,
        username="admin",
        password="s3cret-pw",
    )
    assert "s3cret-pw" not in repr(config)
    assert "s3cret-pw" not in str(config)
    assert "10.0.0.5" in repr(config)


@pytest.mark.parametrize(
    "ts", [dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, tzinfo=dt.UTC)]
)
def test_a_broken_clock_is_named(ts: dt.datetime) -> None:
    logs = [
        Idle(id=uuid.uuid4(), ts=NOW, duration_ms=1),
        Idle(id=uuid.uuid4(), ts=ts, duration_ms=1),
    ]
    with pytest.raises(ProtocolError) as info:
        storable.make_storable(logs, "$.groups[2].logs", NOW, storable.AGENT_WINDOW)
    assert info.value.path == "$.groups[2].logs[1].ts"
    storable.make_storable(logs[:1], "$.logs", NOW, storable.AGENT_WINDOW)


def test_a_status_fault_past_its_bound_is_refused_naming_the_field() -> None:
    at_bound = Status(ts=dt.datetime(2026, 12, 1, tzinfo=dt.UTC), fault="x" * MAX_FAULT_CHARS)
    raw = codec.json_encoder.encode(at_bound)
    assert codec.gateway_message.decode_json(raw) == at_bound
    too_long = raw.replace(b'"x', b'"xx', 1)
    with pytest.raises(ProtocolError, match=r"fault"):
        codec.gateway_message.decode_json(too_long)


def test_an_agents_seen_list_past_its_bound_is_refused_naming_the_field() -> None:
    agent = AgentSeen(
        agent_uid="pc", hostname="pc", last_seen_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    )
    full = AgentsSeen(agents=[agent] * MAX_AGENTS_PER_REPORT)
    assert codec.gateway_message.decode_json(codec.json_encoder.encode(full)) == full
    over = codec.json_encoder.encode(AgentsSeen(agents=[agent] * (MAX_AGENTS_PER_REPORT + 1)))
    with pytest.raises(ProtocolError, match=r"agents"):
        codec.gateway_message.decode_json(over)
