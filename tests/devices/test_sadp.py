"""SADP's wire format without sockets: the probe we send, the ProbeMatch answers we accept,
and what a hostile or stray datagram becomes (nothing, or a ValueError naming the field)."""

from __future__ import annotations

import socket
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import sadp

PROBE_ID = "8C5A9F2E-4B1D-4E7A-9C3F-2D6E8B1A0F47"

# The shape of a DS-K1T341 terminal's answer: CRLF-separated fields, IPv6 and OEM details
# this scanner does not use.
PROBE_MATCH = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n<ProbeMatch>\r\n'
    b"<Uuid>8C5A9F2E-4B1D-4E7A-9C3F-2D6E8B1A0F47</Uuid>\r\n<Types>inquiry</Types>\r\n"
    b"<DeviceType>605</DeviceType>\r\n<DeviceDescription>DS-K1T341AMF</DeviceDescription>\r\n"
    b"<DeviceSN>DS-K1T341AMF20230101V031000ENJ12345678</DeviceSN>\r\n"
    b"<CommandPort>8000</CommandPort>\r\n<HttpPort>8080</HttpPort>\r\n"
    b"<MAC>44-19-b6-12-34-56</MAC>\r\n<IPv4Address>127.0.0.1</IPv4Address>\r\n"
    b"<IPv4SubnetMask>255.255.255.0</IPv4SubnetMask>\r\n<IPv4Gateway>0.0.0.0</IPv4Gateway>\r\n"
    b"<IPv6Address>::</IPv6Address>\r\n<IPv6Gateway>::</IPv6Gateway>\r\n"
    b"<IPv6MaskLen>64</IPv6MaskLen>\r\n<DHCP>false</DHCP>\r\n"
    b"<AnalogChannelNum>0</AnalogChannelNum>\r\n<DigitalChannelNum>0</DigitalChannelNum>\r\n"
    b"<SoftwareVersion>V3.2.30build 230301</SoftwareVersion>\r\n"
    b"<DSPVersion>V2.0 build 230301</DSPVersion>\r\n"
    b"<BootTime>2026-12-01 08:00:00</BootTime>\r\n<OEMInfo>N/A</OEMInfo>\r\n"
    b"<Activated>false</Activated>\r\n<PasswordResetAbility>true</PasswordResetAbility>\r\n"
    b"<SDKOverTLSPort>8443</SDKOverTLSPort>\r\n</ProbeMatch>\r\n"
)


def match_with(**fields: str) -> bytes:
    base = {
        "Uuid": PROBE_ID,
        "DeviceDescription": "DS-K1T671M",
        "DeviceSN": "SN1",
        "IPv4Address": "127.0.0.1",
        "HttpPort": "80",
        "Activated": "true",
    }
    base.update(fields)
    body = "".join(f"<{k}>{v}</{k}>" for k, v in base.items())
    return f"<ProbeMatch>{body}</ProbeMatch>".encode()


def test_the_probe_is_an_inquiry_carrying_its_uuid() -> None:
    probe_id = str(uuid.uuid4())
    assert sadp.build_probe(probe_id) == (
        b'<?xml version="1.0" encoding="utf-8"?><Probe><Uuid>'
        + probe_id.upper().encode()
        + b"</Uuid><Types>inquiry</Types></Probe>"
    )


def test_a_probe_id_that_is_not_a_uuid_is_refused() -> None:
    with pytest.raises(ValueError):
        sadp.build_probe("</Uuid><Types>activate</Types>")


def test_a_terminals_answer_names_model_serial_address_and_activation() -> None:
    assert sadp.parse_probe_match(PROBE_MATCH, PROBE_ID.lower()) == sadp.SadpDevice(
        device_type="605",
        model="DS-K1T341AMF",
        serial="DS-K1T341AMF20230101V031000ENJ12345678",
        ipv4="127.0.0.1",
        mac="44-19-b6-12-34-56",
        http_port=8080,
        activated=False,
    )


@pytest.mark.parametrize(
    "datagram",
    [
        PROBE_MATCH.replace(PROBE_ID.encode(), str(uuid.uuid4()).encode()),  # another scanner's
        sadp.build_probe(PROBE_ID),  # our own probe, looped back
        b"<Other/>",
    ],
)
def test_what_does_not_answer_our_probe_is_ignored(datagram: bytes) -> None:
    assert sadp.parse_probe_match(datagram, PROBE_ID) is None


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"<ProbeMatch>" + b"x" * sadp.MAX_DATAGRAM + b"</ProbeMatch>", "larger than"),
        (
            b'<!DOCTYPE p [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b"<ProbeMatch><DeviceSN>&b;</DeviceSN></ProbeMatch>",
            "DTD",
        ),
        (b"<ProbeMatch><Uuid>", "not XML"),
        (b'<?xml version="1.0" encoding="x-no-such"?><ProbeMatch/>', "not XML"),
        (match_with(DeviceSN=""), "no DeviceSN"),
        (match_with(DeviceSN="S" * 129), "DeviceSN is longer"),
        (match_with(DeviceDescription="a\tb"), "DeviceDescription"),
        (match_with(IPv4Address="localhost"), "IPv4Address"),
        (match_with(IPv4Address=""), "IPv4Address"),
        (match_with(HttpPort="0"), "HttpPort"),
        (match_with(HttpPort="65536"), "HttpPort"),
        (match_with(HttpPort="-1"), "HttpPort"),
    ],
)
def test_hostile_answers_are_refused_naming_the_fault(datagram: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sadp.parse_probe_match(datagram, PROBE_ID)


def test_activation_other_than_true_or_false_is_unknown() -> None:
    device = sadp.parse_probe_match(match_with(Activated="maybe"), PROBE_ID)
    assert device is not None and device.activated is None


def test_collect_keeps_loopback_answers_once_per_serial() -> None:
    answers = [
        (match_with(DeviceSN="B", HttpPort="81"), "127.0.0.1"),
        (match_with(DeviceSN="A"), "127.0.0.1"),
        (match_with(DeviceSN="A"), "127.0.0.1"),  # heard unicast and multicast
        (match_with(DeviceSN="C"), "192.0.2.7"),  # a source off the machine
        (match_with(DeviceSN="D", IPv4Address="192.0.2.8"), "127.0.0.1"),  # points off it
        (b"garbage", "127.0.0.1"),
        (match_with(DeviceSN="E", Uuid=str(uuid.uuid4())), "127.0.0.1"),
    ]
    assert [(d.serial, d.http_port) for d in sadp.collect(answers, PROBE_ID)] == [
        ("A", 80),
        ("B", 81),
    ]


def test_collect_keeps_at_most_max_devices() -> None:
    answers = [(match_with(DeviceSN=f"SN{i}"), "127.0.0.1") for i in range(sadp.MAX_DEVICES + 5)]
    assert len(sadp.collect(answers, PROBE_ID)) == sadp.MAX_DEVICES


@given(st.binary(max_size=sadp.MAX_DATAGRAM + 16))
def test_any_datagram_is_a_device_none_or_a_value_error(datagram: bytes) -> None:
    try:
        device = sadp.parse_probe_match(datagram, PROBE_ID)
    except ValueError:
        return
    assert device is None or isinstance(device, sadp.SadpDevice)


_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_characters="<&>"),
    max_size=sadp.MAX_FIELD,
)


@given(
    model=_text, serial=_text.filter(str.strip), port=st.integers(1, 65535), activated=st.booleans()
)
def test_any_well_formed_answer_round_trips(
    model: str, serial: str, port: int, activated: bool
) -> None:
    device = sadp.parse_probe_match(
        match_with(
            DeviceDescription=model,
            DeviceSN=serial,
            HttpPort=str(port),
            Activated=str(activated).lower(),
        ),
        PROBE_ID,
    )
    assert device is not None
    assert (device.model, device.serial, device.http_port, device.activated) == (
        model.strip(),
        serial.strip(),
        port,
        activated,
    )


@pytest.mark.trio
async def test_the_probe_socket_sends_on_loopback_with_ttl_zero() -> None:
    with sadp._loopback_sender() as sock:
        interface = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
        assert socket.inet_ntoa(interface) == "127.0.0.1"
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 0
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1
