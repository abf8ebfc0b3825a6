"""BioStar 2 REST answers without I/O: byte fixtures shaped as the server sends them, and
hostile bytes."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.devices import biostar_api as api
from gateway.devices.base import DeviceError, DeviceErrorKind

PAGE = b"""{"EventCollection": {"rows": [
 {"id": "41", "datetime": "2026-11-30T08:59:12.00Z", "server_datetime": "2026-11-30T08:59:13.00Z",
  "event_type_id": {"code": "4867"}, "user_id": {"user_id": "1001", "name": "Ann"},
  "door_id": [{"id": "1", "name": "Front"}], "device_id": {"id": "541531029"}},
 {"id": "42", "datetime": "2026-11-30T09:00:00.00Z", "event_type_id": {"code": "5121"},
  "user_id": {"user_id": "1002"}},
 {"id": "43", "datetime": "2026-11-30T09:00:01.00Z", "event_type_id": {"code": "20992"},
  "door_id": {"id": "2"}},
 {"id": "x", "datetime": "2026-11-30T09:00:02.00Z", "event_type_id": {"code": "4867"}},
 {"id": "44", "datetime": "never", "event_type_id": {"code": "4867"}}
]}}"""


def test_event_rows_become_access_events() -> None:
    page = api.parse_event_page(PAGE)
    assert page.rows == 5
    assert page.last_time == dt.datetime(2026, 11, 30, 9, 0, 2, tzinfo=dt.UTC)
    first, identify_fail, door = page.events
    assert (first.serial_no, first.major, first.minor, first.employee_no, first.door) == (
        41,
        5,
        1,
        "1001",
        1,
    )
    assert first.time == dt.datetime(2026, 11, 30, 8, 59, 12, tzinfo=dt.UTC)
    assert (identify_fail.major, identify_fail.minor) == (5, 6)  # 0x1400: identify failed
    assert (door.major, door.minor, door.door) == (0, 20992, 2)


def test_no_match_leaves_rows_out() -> None:
    page = api.parse_event_page(b'{"EventCollection": {}}')
    assert (page.events, page.rows, page.last_time) == ([], 0, None)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, DeviceErrorKind.AUTH_FAILED),
        (400, DeviceErrorKind.BAD_REQUEST),
        (503, DeviceErrorKind.BUSY),
        (500, DeviceErrorKind.DEVICE_FAULT),
    ],
)
def test_errors_name_their_cause(status: int, kind: DeviceErrorKind) -> None:
    body = b'{"Response": {"code": "1", "message": "Door 9 not found"}}'
    with pytest.raises(DeviceError) as caught:
        api.check_answer(status, body, "door 9 open")
    assert caught.value.kind is kind
    assert "door 9 open" in str(caught.value)
    if status == 400:
        assert "Door 9 not found" in str(caught.value)


def test_search_body_asks_for_a_datetime_window_oldest_first() -> None:
    since = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
    body = msgspec.json.decode(api.build_event_search(since, since + dt.timedelta(hours=1), 50))
    query = body["Query"]
    assert query["limit"] == 50
    assert query["conditions"] == [
        {
            "column": "datetime",
            "operator": 3,
            "values": ["2026-11-30T08:00:00.00Z", "2026-11-30T09:00:00.00Z"],
        }
    ]
    precise = dt.datetime(2026, 11, 30, 8, 0, 1, 379_000, tzinfo=dt.UTC)
    assert api.iso_utc(precise) == "2026-11-30T08:00:01.37Z"
    assert query["conditions"] == [
        {
            "column": "datetime",
            "operator": 3,
            "values": ["2026-11-30T08:00:00.00Z", "2026-11-30T09:00:00.00Z"],
        }
    ]
    assert query["orders"] == [{"column": "datetime", "descending": False}]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_page_or_a_protocol_error(content: bytes) -> None:
    try:
        page = api.parse_event_page(content)
    except DeviceError as exc:
        assert exc.kind is DeviceErrorKind.PROTOCOL
        return
    assert page.rows <= api.MAX_ROWS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)
row_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.from_regex(r"[0-9]{1,25}", fullmatch=True),
        "datetime": json_values,
        "event_type_id": json_values,
        "user_id": json_values,
        "door_id": json_values,
        "card_id": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(row_fields, max_size=8))
def test_odd_rows_are_skipped_never_half_read(rows: list[dict[str, object]]) -> None:
    content = msgspec.json.encode({"EventCollection": {"rows": rows}})
    page = api.parse_event_page(content)
    for event in page.events:
        assert 0 <= event.serial_no < 10**18
        assert event.time.tzinfo is not None
        for text in (event.employee_no, event.name, event.card_no, event.verify_mode):
            assert text is None or (len(text) <= 256 and "\0" not in text)
