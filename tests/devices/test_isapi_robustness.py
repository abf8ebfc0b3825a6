"""Whatever a device sends, parsing fails only with DeviceError, never with a crash."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devices import isapi, isapi_status
from gateway.devices.base import DeviceError

JSON_PARSERS: list[Callable[[bytes], Any]] = [
    isapi.parse_event_page,
    isapi.parse_user_page,
    isapi.parse_work_status,
]
XML_PARSERS: list[Callable[[bytes], Any]] = [
    isapi.parse_device_info,
    isapi.parse_device_status,
    isapi.parse_time,
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(
    ["AcsEvent", "UserInfoSearch", "AcsWorkStatus", "InfoList", "UserInfo", "serialNo", "time",
     "responseStatusStrg", "doorStatus", "doorLockStatus", "RightPlan", "Valid", "employeeNo"]
)  # fmt: skip
shaped = st.recursive(
    json_values,
    lambda inner: st.dictionaries(keys, inner, max_size=5) | st.lists(inner, max_size=3),
    max_leaves=30,
)


def only_device_errors(parse: Callable[[bytes], Any], body: bytes) -> None:
    with contextlib.suppress(DeviceError):
        parse(body)


@pytest.mark.parametrize("parse", JSON_PARSERS)
@given(value=shaped)
@settings(max_examples=150, deadline=None)
def test_json_parsers(parse: Callable[[bytes], Any], value: Any) -> None:
    only_device_errors(parse, msgspec.json.encode(value))


@pytest.mark.parametrize("parse", [*XML_PARSERS, *JSON_PARSERS])
@given(body=st.binary(max_size=200))
@settings(max_examples=100, deadline=None)
def test_any_bytes(parse: Callable[[bytes], Any], body: bytes) -> None:
    only_device_errors(parse, body)


def test_far_away_zone_is_a_device_error() -> None:
    body = b"<Time><localTime>2026-01-01T00:00:00</localTime><timeZone>X-99</timeZone></Time>"
    with pytest.raises(DeviceError):
        isapi.parse_time(body)


@given(
    tag=st.sampled_from(["localTime", "timeZone", "serialNumber", "electroLockNum", "x"]),
    text=st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=30),
)
@settings(max_examples=200, deadline=None)
def test_xml_fields_with_odd_text(tag: str, text: str) -> None:
    body = f"<Time><{tag}>{escape(text)}</{tag}><localTime>2026-01-01T00:00:00</localTime></Time>"
    for parse in XML_PARSERS:
        only_device_errors(parse, body.encode())


@given(body=st.binary(max_size=200), status=st.sampled_from([200, 400, 401, 403, 500, 503]))
@settings(max_examples=200, deadline=None)
def test_status_answers(body: bytes, status: int) -> None:
    only_device_errors(lambda b: isapi_status.check_ok(status, b, "x"), body)
    assert isinstance(isapi_status.error_for_response(status, body, "x"), DeviceError)
