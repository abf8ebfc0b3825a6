"""`td-gateway discover`: which terminals answer on the given addresses and ports.

Each host:port gets at most two unauthenticated HTTP requests, neither of which changes
anything on a device: `GET /ISAPI/System/deviceInfo` (a Hikvision terminal answers 401 with
a Digest challenge, or its DeviceInfo) and `POST /api/login` with no credentials (a BioStar 2
server answers with its `{"Response": ...}` error body; no login is attempted, so no
lock-out counter moves). With `--sadp`, one Hikvision SADP inquiry goes to the multicast
group on the loopback interface (gateway/sadp.py) and every terminal that answers is listed
with its model, serial and whether it is activated. ZKTeco PUSH terminals are not probed:
they come to the gateway, and the ones nobody added are listed at the backend's
`/v2/devices/seen`.

This build probes loopback addresses only, so a scan can never leave the machine. Run as a
gateway command, the result goes to the backend, which lists it as discovered devices an
operator adopts with one call (backend/routes/discovered.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence

import httpx
import msgspec
import trio

from gateway import sadp
from gateway.devices import isapi
from gateway.devices.base import DeviceError

MAX_TARGETS = 4096
DEFAULT_TIMEOUT_S = 1.0
CONCURRENCY = 64


class Found(msgspec.Struct, kw_only=True):
    vendor: str
    address: str
    model: str = ""
    serial: str = ""
    # None when the device does not say without credentials.
    activated: bool | None = None


class Report(msgspec.Struct):
    found: list[Found]
    probed: int


def parse_targets(hosts: str, ports: str) -> list[tuple[str, int]]:
    """`127.0.0.1,127.0.0.2-127.0.0.9` x `80,8000-8010`; ValueError says what is wrong."""
    addresses: list[str] = []
    for part in filter(None, (p.strip() for p in hosts.split(","))):
        first, _, last = part.partition("-")
        try:
            low = ipaddress.ip_address(first)
            high = ipaddress.ip_address(last) if last else low
        except ValueError:
            raise ValueError(f"--hosts: {part!r} is not an address or a range") from None
        if type(low) is not type(high) or int(high) < int(low):
            raise ValueError(f"--hosts: {part!r} is not an ascending range")
        if int(high) - int(low) >= MAX_TARGETS:
            raise ValueError(f"--hosts: {part!r} has more than {MAX_TARGETS} addresses")
        for value in range(int(low), int(high) + 1):
            address = (
                ipaddress.ip_address(value) if low.version == 4 else ipaddress.IPv6Address(value)
            )
            if not address.is_loopback:
                raise ValueError(
                    f"--hosts: {address} is not a loopback address; this build "
                    "only probes the machine it runs on"
                )
            addresses.append(str(address))
    port_numbers: list[int] = []
    for part in filter(None, (p.strip() for p in ports.split(","))):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"--ports: {part!r} is not a port or a range")
        low_port, high_port = int(first), int(last or first)
        if not 1 <= low_port <= high_port <= 65535:
            raise ValueError(f"--ports: {part!r} is outside 1-65535 or descending")
        port_numbers += range(low_port, high_port + 1)
    targets = [(host, port) for host in addresses for port in port_numbers]
    if not targets:
        raise ValueError("--hosts and --ports name no address to probe")
    if len(targets) > MAX_TARGETS:
        raise ValueError(f"more than {MAX_TARGETS} host:port pairs; narrow --hosts or --ports")
    return targets


async def probe(client: httpx.AsyncClient, host: str, port: int) -> Found | None:
    """What answers at host:port, or None (closed, silent, or not a terminal we know)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    base = f"http://{where}"
    try:
        answer = await client.get(base + isapi.DEVICE_INFO)
    except httpx.HTTPError:
        return None
    challenge = answer.headers.get("www-authenticate", "")
    if answer.status_code == 401 and challenge.lower().startswith("digest"):
        return Found(vendor="hikvision", address=where)
    if answer.status_code == 200:
        try:
            info = isapi.parse_device_info(answer.content[:65536])
        except DeviceError:
            info = None
        if info is not None:
            return Found(
                vendor="hikvision", address=where, model=info.model, serial=info.serial_number
            )
    try:
        login = await client.post(
            base + "/api/login", content=b"{}", headers={"Content-Type": "application/json"}
        )
    except httpx.HTTPError:
        return None
    try:
        body = msgspec.json.decode(login.content[:65536])
    except msgspec.DecodeError:
        return None
    if login.status_code in (400, 401) and isinstance(body, dict) and "Response" in body:
        return Found(vendor="biostar", address=where, model="BioStar 2")
    return None


def _from_sadp(device: sadp.SadpDevice) -> Found:
    return Found(
        vendor="hikvision",
        address=f"{device.ipv4}:{device.http_port or 80}",
        model=device.model,
        serial=device.serial,
        activated=device.activated,
    )


async def discover(
    targets: list[tuple[str, int]],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    sadp_port: int | None = None,
) -> list[Found]:
    """HTTP probes of `targets`, and a SADP inquiry when `sadp_port` is given; where both
    find one address, the SADP answer (serial, activation) is the one kept. OSError when
    the SADP inquiry cannot be made (see sadp.probe)."""
    found: list[Found] = []
    by_sadp: list[Found] = []
    limiter = trio.CapacityLimiter(CONCURRENCY)
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:

        async def one(host: str, port: int) -> None:
            async with limiter:
                result = await probe(client, host, port)
            if result is not None:
                found.append(result)

        sadp_failures: list[OSError] = []

        async def inquire(port: int) -> None:
            try:
                devices = await sadp.probe(port=port, timeout_s=timeout_s)
            except OSError as exc:
                sadp_failures.append(exc)
                return
            by_sadp.extend(_from_sadp(d) for d in devices)

        async with trio.open_nursery() as nursery:
            if sadp_port is not None:
                nursery.start_soon(inquire, sadp_port)
            for host, port in targets:
                nursery.start_soon(one, host, port)
    if sadp_failures:
        raise sadp_failures[0]
    answered = {f.address for f in by_sadp}
    merged = by_sadp + [f for f in found if f.address not in answered]
    return sorted(merged, key=lambda f: (f.address, f.serial))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="td-gateway discover", description="Find terminals answering on loopback ports."
    )
    parser.add_argument("--hosts", default="127.0.0.1", help="addresses or ranges, a,b-c")
    parser.add_argument("--ports", default="", help="ports or ranges, e.g. 80,8000-8100")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per probe, s")
    parser.add_argument(
        "--sadp", action="store_true", help="also send a Hikvision SADP inquiry on loopback"
    )
    parser.add_argument("--sadp-port", type=int, default=sadp.SADP_PORT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        targets = parse_targets(args.hosts, args.ports) if args.ports or not args.sadp else []
        if not 1 <= args.sadp_port <= 65535:
            raise ValueError(f"--sadp-port {args.sadp_port} is outside 1-65535")
    except ValueError as exc:
        print(f"td-gateway discover: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.timeout <= 30:
        print("td-gateway discover: --timeout must be between 0 and 30 s", file=sys.stderr)
        return 2
    sadp_port = args.sadp_port if args.sadp else None
    try:
        found = trio.run(lambda: discover(targets, timeout_s=args.timeout, sadp_port=sadp_port))
    except OSError as exc:
        # The group could not be joined or the probe not sent (no multicast on loopback).
        print(f"td-gateway discover: SADP on loopback failed: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(Report(found=found, probed=len(targets))).decode())
    return 0
