"""The storable-log rule both sides apply (protocol.storable) and the value bounds
(protocol.bounds): refusals name the field, NUL in captured text becomes U+FFFD."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import msgspec
import pytest

from protocol import codec, storable
from protocol.agent import ActiveWindow, DeviceEvent, Idle
from protocol.bounds import MAX_DEPTH, FreeFormError, check_free_form
from protocol.codec import ProtocolError

NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)


def idle(ts: dt.datetime) -> Idle:
    return Idle(id=uuid.uuid4(), ts=ts, duration_ms=1)


def test_nul_in_captured_text_is_replaced_in_every_text_field() -> None:
    window = ActiveWindow(
        id=uuid.uuid4(), ts=NOW, app="a\x00", title="\x00t\x00", url="u\x00", duration_ms=1
    )
    event = DeviceEvent(
        id=uuid.uuid4(), ts=NOW, device_id="d\x00", serial_no=1, major=5, minor=75,
        employee_no="e\x00", card_no=None, verify_mode="\x00",
    )  # fmt: skip

    storable.make_storable([window, event], "$.logs", NOW, storable.AGENT_WINDOW)

    assert (window.app, window.title, window.url) == ("a\ufffd", "\ufffdt\ufffd", "u\ufffd")
    assert (event.device_id, event.employee_no, event.card_no, event.verify_mode) == (
        "d\ufffd", "e\ufffd", None, "\ufffd"
    )  # fmt: skip
    assert "\\u0000" not in codec.json_encoder.encode([window, event]).decode()


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (-storable.MAX_LOG_AGE, True),
        (-storable.MAX_LOG_AGE - dt.timedelta(seconds=1), False),
        (storable.MAX_CLOCK_AHEAD, True),
        (storable.MAX_CLOCK_AHEAD + dt.timedelta(seconds=1), False),
    ],
)
def test_the_agent_window_edges(offset: dt.timedelta, ok: bool) -> None:
    logs = [idle(NOW), idle(NOW + offset)]
    if ok:
        storable.check_agent_logs(logs, NOW)
        return
    with pytest.raises(ProtocolError) as info:
        storable.check_agent_logs(logs, NOW)
    assert info.value.path == "$.logs[1].ts"


def test_at_most_a_few_months_per_agent_request() -> None:
    spread = [idle(NOW - dt.timedelta(days=d)) for d in (0, 10, 20, 28)]
    months = {storable.month_of(log.ts) for log in spread}
    assert len(months) == 2
    storable.check_agent_logs(spread, NOW)
    with pytest.raises(ProtocolError, match="span 4 months"):
        storable.check_months(
            {dt.date(2026, m, 1) for m in (8, 9, 10, 11)}, "$.logs", storable.AGENT_WINDOW
        )


def test_the_backend_window_holds_the_agents_window() -> None:
    backend = storable.backend_window(dt.timedelta(days=90))
    assert backend.past >= storable.AGENT_WINDOW.past
    assert backend.ahead > storable.AGENT_WINDOW.ahead
    # A shorter retention never makes the backend refuse what a gateway may accept.
    assert storable.backend_window(dt.timedelta(days=7)).past == storable.MAX_LOG_AGE


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": [{"b": "x\x00"}]}, "$.payload.a[0].b: contains NUL"),
        ({"k\x00": 1}, "contains NUL"),
        ({"n": 2**64}, "$.payload.n: integer outside the 64-bit range"),
        ({"n": -(2**63) - 1}, "integer outside"),
        ({"s": "x" * 70_000}, "longer than"),
    ],
)
def test_free_form_values_jsonb_cannot_store_are_named(value: Any, problem: str) -> None:
    with pytest.raises(FreeFormError, match=re.escape(problem)):
        check_free_form(value, "$.payload")


def test_free_form_depth_is_bounded() -> None:
    nested: Any = 1
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    check_free_form({"a": nested}, "payload")
    with pytest.raises(FreeFormError, match="nested deeper"):
        check_free_form({"a": [nested]}, "payload")


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize(
    "decoder",
    [codec.logs_request, codec.uplink_batch, codec.gateway_message, codec.backend_message],
)
def test_deep_nesting_is_a_protocol_error_in_both_formats(depth: int, decoder: Any) -> None:
    deep_json = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decoder.decode_json(deep_json)
    deep_msgpack = b"\x81\xa1x" + b"\x91" * depth + b"\x90"
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decoder.decode_msgpack(deep_msgpack)


@pytest.mark.parametrize("value", [2**63, 2**64, 2**70, -1])
def test_integers_past_64_bits_are_refused_where_decoded(value: int) -> None:
    body = {"logs": [{"kind": "idle", "id": str(uuid.uuid4()), "ts": NOW.isoformat(),
                      "duration_ms": value}]}  # fmt: skip
    with pytest.raises(ProtocolError) as info:
        codec.logs_request.decode_json(json.dumps(body))
    assert info.value.path == "$.logs[0].duration_ms"


def test_control_messages_refuse_what_their_columns_cannot_hold() -> None:
    def decode(message: dict[str, Any]) -> Any:
        return codec.gateway_message.decode_json(msgspec.json.encode(message))

    ack = {"type": "policy_ack", "policy_id": "p", "revision": 2**31, "checksum": "c",
           "applied": True}  # fmt: skip
    with pytest.raises(ProtocolError, match=r"\$.revision"):
        decode(ack)
    with pytest.raises(ProtocolError, match=r"\$.checksum"):
        decode({**ack, "revision": 1, "checksum": "c" * 65})
    with pytest.raises(ProtocolError, match=re.escape("result.a[0]: integer outside")):
        decode({"type": "command_result", "command_id": str(uuid.uuid4()), "status": "FAILED",
                "result": {"a": [2**64]}})  # fmt: skip
    with pytest.raises(ProtocolError, match=r"\$.hostname"):
        decode({"type": "hello", "version": "1", "hostname": "h\x00"})


def test_reports_quoting_a_terminal_keep_their_text_made_storable() -> None:
    def decode(message: dict[str, Any]) -> Any:
        return codec.gateway_message.decode_json(msgspec.json.encode(message))

    result = decode({"type": "command_result", "command_id": str(uuid.uuid4()),
                     "status": "FAILED", "result": {"a\x00": ["b\x00"]},
                     "error": "device said \x00" + "x" * 5000})  # fmt: skip
    assert result.result == {"a\ufffd": ["b\ufffd"]}
    assert result.error.startswith("device said \ufffd") and len(result.error) == 4096
    status = decode({"type": "status", "ts": NOW.isoformat(), "fault": "disk\x00"})
    assert status.fault == "disk\ufffd"
    state = decode({"type": "device_state", "device_id": "d", "online": True,
                    "checked_at": NOW.isoformat(), "info": {"model": "DS\x00"}})  # fmt: skip
    assert state.info == {"model": "DS\ufffd"}
