"""The simulated terminal's SADP answer: a ProbeMatch for every `inquiry` Probe that reaches
the 239.255.255.250:37020 group on the loopback interface.

Real firmware answers either unicast to the prober or multicast to the group; `multicast`
picks the second. The simulator joins the group on loopback only and sends with TTL 0, so
it is heard on this machine and nowhere else.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import trio

from devsim.hikvision.terminal import SimulatorConfig

GROUP = "239.255.255.250"
LOOPBACK = "127.0.0.1"
MAX_PROBE = 4096


def inquiry_uuid(datagram: bytes) -> str | None:
    """The Uuid of an inquiry Probe, or None for anything else (answers, other types)."""
    if len(datagram) > MAX_PROBE or b"<!" in datagram:
        return None
    try:
        root = ET.fromstring(datagram)
    except (ET.ParseError, LookupError, ValueError):
        return None
    if root.tag != "Probe" or (root.findtext("Types") or "").strip() != "inquiry":
        return None
    uuid = (root.findtext("Uuid") or "").strip()
    return uuid if 0 < len(uuid) <= 64 else None


def probe_match(uuid: str, config: SimulatorConfig, http_port: int) -> bytes:
    fields = {
        "Uuid": uuid,
        "Types": "inquiry",
        "DeviceType": "605",
        "DeviceDescription": config.model,
        "DeviceSN": config.serial,
        "CommandPort": "8000",
        "HttpPort": str(http_port),
        "MAC": "44-19-b6-00-00-01",
        "IPv4Address": config.host,
        "IPv4SubnetMask": "255.0.0.0",
        "IPv4Gateway": "0.0.0.0",
        "DHCP": "false",
        "SoftwareVersion": "V3.2.30build 230301",
        "Activated": "true",
        "PasswordResetAbility": "false",
    }
    body = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items())
    return f'<?xml version="1.0" encoding="UTF-8"?><ProbeMatch>{body}</ProbeMatch>'.encode()


async def answer_probes(
    config: SimulatorConfig,
    http_port: int,
    *,
    sadp_port: int,
    multicast: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    listener = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    sender = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with listener, sender:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        membership = socket.inet_aton(GROUP) + socket.inet_aton(LOOPBACK)
        listener.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        await listener.bind((GROUP, sadp_port))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        await sender.bind((LOOPBACK, 0))
        task_status.started()
        while True:
            datagram, source = await listener.recvfrom(MAX_PROBE + 1)
            uuid = inquiry_uuid(datagram)
            if uuid is None:
                continue
            reply_to = (GROUP, sadp_port) if multicast else source
            await sender.sendto(probe_match(uuid, config, http_port), reply_to)
