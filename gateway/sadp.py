"""Hikvision SADP discovery: the probe's wire format (sans-IO) and a loopback-only send.

A SADP probe is one UDP datagram, `<Probe><Uuid>..</Uuid><Types>inquiry</Types></Probe>`,
to 239.255.255.250:37020; each device answers a `<ProbeMatch>` carrying the same Uuid and
its model, serial, addresses, HTTP port and whether it is activated. Depending on firmware
the answer comes back unicast to the sender or multicast to the group, so both are read.
Only `inquiry` is ever sent: the other SADP types (activate, update) change the device.

Every answer is hostile input: its size, its fields and the number of answers are bounded,
and a document with a DTD is refused before it reaches the XML parser.

This build sends the probe only on the loopback interface with TTL 0, so it never leaves
the machine, and reads answers only from loopback sources.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable

import msgspec
import trio

MULTICAST_GROUP = "239.255.255.250"
SADP_PORT = 37020
LOOPBACK_INTERFACE = "127.0.0.1"
# A real ProbeMatch is about 1.5 KiB; anything past this is not one.
MAX_DATAGRAM = 8192
MAX_FIELD = 128
MAX_DEVICES = 1024
INQUIRY = "inquiry"


class SadpDevice(msgspec.Struct, frozen=True, kw_only=True):
    device_type: str
    model: str
    serial: str
    ipv4: str
    mac: str
    http_port: int | None
    activated: bool | None


def build_probe(probe_id: str) -> bytes:
    """The inquiry datagram; `probe_id` is a UUID the answers must echo."""
    uuidlib.UUID(probe_id)  # ValueError for anything that is not one
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Probe><Uuid>{probe_id.upper()}</Uuid><Types>{INQUIRY}</Types></Probe>"
    ).encode()


def _field(root: ET.Element, name: str) -> str:
    node = root.find(name)
    text = "" if node is None or node.text is None else node.text.strip()
    if len(text) > MAX_FIELD or any(ord(c) < 0x20 for c in text):
        raise ValueError(f"ProbeMatch {name} is longer than {MAX_FIELD} or has control chars")
    return text


def parse_probe_match(datagram: bytes, probe_id: str) -> SadpDevice | None:
    """The device a ProbeMatch describes; None if it is not an answer to `probe_id`
    (our own probe looping back, another scanner's answers). ValueError names the fault."""
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError(f"datagram is larger than {MAX_DATAGRAM} bytes")
    # Entities are how a few hundred bytes of XML become gigabytes; SADP never uses a DTD.
    if b"<!" in datagram:
        raise ValueError("datagram carries a DTD or comment; a ProbeMatch has none")
    try:
        root = ET.fromstring(datagram)
    except (ET.ParseError, LookupError, ValueError) as exc:  # LookupError: bad encoding
        raise ValueError(f"datagram is not XML: {exc}") from None
    if root.tag != "ProbeMatch":
        return None
    if _field(root, "Uuid").upper() != probe_id.upper():
        return None
    serial = _field(root, "DeviceSN")
    if not serial:
        raise ValueError("ProbeMatch has no DeviceSN")
    address = _field(root, "IPv4Address")
    try:
        ipv4 = str(ipaddress.IPv4Address(address))
    except ValueError:
        raise ValueError(f"ProbeMatch IPv4Address {address[:40]!r} is not an address") from None
    port_text = _field(root, "HttpPort")
    http_port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"ProbeMatch HttpPort {port_text[:40]!r} is not a port")
        http_port = int(port_text)
    activated = {"true": True, "false": False}.get(_field(root, "Activated").lower())
    return SadpDevice(
        device_type=_field(root, "DeviceType"),
        model=_field(root, "DeviceDescription"),
        serial=serial,
        ipv4=ipv4,
        mac=_field(root, "MAC"),
        http_port=http_port,
        activated=activated,
    )


def collect(answers: Iterable[tuple[bytes, str]], probe_id: str) -> list[SadpDevice]:
    """Devices from (datagram, source address) pairs: loopback sources only, malformed
    answers dropped, one entry per serial, at most MAX_DEVICES."""
    devices: dict[str, SadpDevice] = {}
    for datagram, source in answers:
        if not ipaddress.ip_address(source).is_loopback:
            continue
        try:
            device = parse_probe_match(datagram, probe_id)
        except ValueError:
            continue
        # Adopting an address off the machine is what this build must not do.
        if device is None or not ipaddress.IPv4Address(device.ipv4).is_loopback:
            continue
        if device.serial not in devices and len(devices) < MAX_DEVICES:
            devices[device.serial] = device
    return sorted(devices.values(), key=lambda d: (d.ipv4, d.http_port or 0, d.serial))


def _loopback_sender() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    iface = socket.inet_aton(LOOPBACK_INTERFACE)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
    # TTL 0: the kernel delivers the datagram to this host's listeners and no further.
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    return sock


def _group_listener(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    membership = socket.inet_aton(MULTICAST_GROUP) + socket.inet_aton(LOOPBACK_INTERFACE)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    return sock


async def probe(*, port: int = SADP_PORT, timeout_s: float = 1.0) -> list[SadpDevice]:
    """Send one inquiry on loopback and read answers for `timeout_s` seconds; OSError when
    the group cannot be joined or the probe not sent."""
    if not 1 <= port <= 65535:
        raise ValueError(f"SADP port {port} is outside 1-65535")
    probe_id = str(uuidlib.uuid4())
    answers: list[tuple[bytes, str]] = []
    with _loopback_sender() as sender, _group_listener(port) as listener:
        await sender.bind((LOOPBACK_INTERFACE, 0))
        # Bound to the group address, not 0.0.0.0: no unicast to this port is read.
        await listener.bind((MULTICAST_GROUP, port))

        async def read(sock: trio.socket.SocketType) -> None:
            while len(answers) < 4 * MAX_DEVICES:
                datagram, source = await sock.recvfrom(MAX_DATAGRAM + 1)
                answers.append((datagram, source[0]))

        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, sender)
                nursery.start_soon(read, listener)
                await sender.sendto(build_probe(probe_id), (MULTICAST_GROUP, port))
    return collect(answers, probe_id)
