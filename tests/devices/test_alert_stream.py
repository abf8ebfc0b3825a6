"""The alert stream parser against bytes shaped like a terminal's stream, however the bytes
are cut into reads, and against hostile input: it keeps what it buffers bounded and fails
only with StreamError."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devsim.hikvision.stream import access_event_part
from devsim.hikvision.terminal import SimulatedTerminal, SimulatorConfig
from gateway.devices import isapi
from gateway.devices.alert_stream import (
    MAX_HEADER_BYTES,
    MAX_PART_BYTES,
    MultipartParser,
    Part,
    StreamError,
    boundary_of,
    parse_alert,
)
from gateway.devices.manager import to_device_event

FIXTURE = (Path(__file__).parent / "fixtures" / "alert_stream_ds_k1t341.bin").read_bytes()
CLOSE = b"--MIME_boundary--\r\n"


def feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[list[Part], MultipartParser]:
    parser = MultipartParser("MIME_boundary")
    parts: list[Part] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        parts += parser.feed(data[start:cut])
        start = cut
    return parts, parser


def test_a_terminals_stream_gives_its_access_events_and_skips_the_rest() -> None:
    parts, parser = feed_in_pieces(FIXTURE + CLOSE, [])
    assert parser.closed
    assert len(parts) == 5
    alerts = [parse_alert(part) for part in parts]
    assert [a.serial_no if a else None for a in alerts] == [41, None, 42, None, None]
    replayed, face = alerts[0], alerts[2]
    assert replayed is not None and (replayed.major, replayed.minor) == (5, 22)
    assert face is not None
    assert (face.major, face.minor, face.door) == (5, 75, None)
    assert (face.employee_no, face.name, face.verify_mode) == ("1001", "Zoë Müller", "cardOrFace")
    assert face.time == dt.datetime(2026, 11, 26, 2, 0, 3, tzinfo=dt.UTC)
    assert parts[3].headers["content-type"].startswith("application/xml")


def test_the_last_part_without_a_length_waits_for_the_next_boundary() -> None:
    parts, parser = feed_in_pieces(FIXTURE, [])
    assert len(parts) == 4 and not parser.closed
    assert parser.buffered > 0
    assert len(parser.feed(CLOSE)) == 1 and parser.closed


@given(st.lists(st.integers(min_value=0, max_value=len(FIXTURE) + len(CLOSE)), max_size=40))
def test_any_cut_of_the_bytes_gives_the_same_parts(cuts: list[int]) -> None:
    whole, _ = feed_in_pieces(FIXTURE + CLOSE, [])
    pieces, parser = feed_in_pieces(FIXTURE + CLOSE, cuts)
    assert pieces == whole and parser.closed


bodies = st.binary(max_size=2000).filter(lambda b: b"\r\n--MIME_boundary" not in b)


@given(
    st.lists(st.tuples(bodies, st.booleans()), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=30),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_parts_come_back_exactly_as_sent(sent: list[tuple[bytes, bool]], cuts: list[int]) -> None:
    data = b""
    for body, with_length in sent:
        data += b"--MIME_boundary\r\nContent-Type: application/octet-stream\r\n"
        if with_length:
            data += b"Content-Length: %d\r\n" % len(body)
        data += b"\r\n" + body + b"\r\n"
    data += CLOSE
    parts, parser = feed_in_pieces(data, [c for c in cuts if c <= len(data)])
    assert [p.body for p in parts] == [body for body, _ in sent]
    assert parser.closed


@given(st.lists(st.binary(max_size=4096), max_size=40))
def test_hostile_bytes_fail_only_with_stream_error_and_stay_bounded(chunks: list[bytes]) -> None:
    parser = MultipartParser("MIME_boundary")
    try:
        for chunk in [b"--MIME_boundary\r\n", *chunks]:
            for part in parser.feed(chunk):
                assert len(part.body) <= MAX_PART_BYTES
                parse_alert(part)  # never raises
            assert parser.buffered <= MAX_PART_BYTES + MAX_HEADER_BYTES + 4096
    except StreamError:
        pass


@pytest.mark.parametrize(
    "data",
    [
        b"x" * (MAX_HEADER_BYTES + 1),  # no boundary ever
        b"--MIME_boundary\r\n" + b"X-A: b\r\n" * 2000,  # headers without end
        b"--MIME_boundary\r\nContent-Length: %d\r\n\r\n" % (MAX_PART_BYTES + 1),
        b"--MIME_boundary\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"--MIME_boundary\r\nContent-Length: -1\r\n\r\n",
        b"--MIME_boundary\r\n\r\n" + b"y" * (MAX_PART_BYTES + 100),  # a body without end
        b"--MIME_boundary\r\nno colon here\r\n\r\n",
        b"--MIME_boundaryjunk\r\n",
    ],
)
def test_bounds_and_malformed_streams(data: bytes) -> None:
    with pytest.raises(StreamError):
        MultipartParser("MIME_boundary").feed(data)


def test_boundary_from_the_content_type() -> None:
    assert boundary_of("multipart/mixed; boundary=MIME_boundary") == "MIME_boundary"
    assert boundary_of('Multipart/Mixed; charset=utf-8; boundary="b-1"') == "b-1"
    for bad in ("application/json", "multipart/mixed", ""):
        with pytest.raises(StreamError):
            boundary_of(bad)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"dateTime": "2026-11-26T10:00:00Z", "AccessControllerEvent": {"serialNo": 0}}',
        b'{"dateTime": "yesterday", "AccessControllerEvent": {"serialNo": 3}}',
        b'{"dateTime": "2026-11-26T10:00:00Z", "AccessControllerEvent": {"serialNo": 1e30}}',
        b'{"dateTime": "2026-11-26T10:00:00Z", "AccessControllerEvent": {"serialNo": "9'
        + b"9" * 30
        + b'"}}',
        b'{"dateTime": 5, "AccessControllerEvent": {"serialNo": 3}}',
    ],
)
def test_unusable_alerts_are_skipped(body: bytes) -> None:
    assert parse_alert(Part(headers={"content-type": "application/json"}, body=body)) is None


def test_a_streamed_event_is_the_same_log_as_the_searched_one() -> None:
    """Same serialNo, same time, same id: seen both ways, it is one log."""
    terminal = SimulatedTerminal(SimulatorConfig(password="pw", lockout_after=0))
    terminal.simulate_face_access("1001")
    streamed = [
        parse_alert(p)
        for p in MultipartParser("MIME_boundary").feed(
            access_event_part(terminal, terminal.events[0], current=True) + CLOSE
        )
    ]
    search = isapi.build_event_search("s", 0, 30, 1)
    page = terminal._search_events(search)
    searched = isapi.parse_event_page(page.body).events
    assert streamed[0] is not None
    assert to_device_event("d", "SN", streamed[0]) == to_device_event("d", "SN", searched[0])
