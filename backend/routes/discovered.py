"""Terminals a gateway's `discover` command found, and adopting one with one call.

An operator asks a gateway to scan (`POST /v2/gateways/{id}/commands {"type": "discover",
"payload": {"hosts": "...", "ports": "..."}}`); the gateway answers with what responded, and
that answer, stored with the command, is the gateway's list of discovered devices: the
latest successful scan of each gateway replaces the one before. Each entry has an id derived
from the scan and the address, so it stays the same however often it is read, and
`POST /v2/devices/discovered/{id}/adopt {"name", "username", "password"}` turns it into a
device with vendor, host and port taken from the scan.

What a gateway reported is checked here like any other client data: entries that do not
fit the shape (a known vendor, an IP address and port, bounded text) are left out, and at
most `MAX_PER_GATEWAY` are read from one scan.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Meta

from backend.accounts.roles import Permission, needs
from backend.errors import Conflict, NotFound
from backend.routes.common import ADMIN_ERRORS, OrgId, ServicesDep, error_responses
from backend.routes.devices import (
    DeviceCreate,
    DeviceOut,
    Password,
    Scheme,
    ShortText,
    add_reached_device,
    check_gateway_takes_devices,
)
from backend.services import Services
from protocol.bounds import NO_NUL

MAX_PER_GATEWAY = 256
# One answer lists at most this many; `truncated` says when a gateway filter is needed.
MAX_LISTED = 1024
_ReportedText = Annotated[str, Meta(max_length=128, pattern=NO_NUL)]


class _Reported(msgspec.Struct, kw_only=True):
    """One entry of a gateway's `discover` result, as gateway/discovery.py sends it."""

    vendor: Literal["hikvision", "biostar"]
    address: Annotated[str, Meta(min_length=3, max_length=64)]
    model: _ReportedText = ""
    serial: _ReportedText = ""
    activated: bool | None = None


class DiscoveredDeviceOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    gateway_id: uuid.UUID
    vendor: str
    host: str
    port: int
    model: str
    serial: str
    activated: bool | None
    # When the scan that found it finished.
    found_at: dt.datetime
    # The device made from it (same gateway, vendor, host and port), once adopted.
    device_id: uuid.UUID | None


class DiscoveredDevicePage(msgspec.Struct):
    items: list[DiscoveredDeviceOut]
    truncated: bool


class Adopt(msgspec.Struct, kw_only=True):
    name: ShortText
    username: ShortText
    password: Password
    scheme: Scheme = "http"
    enabled: bool = True

    def __repr__(self) -> str:  # never print the password, even in a traceback
        return f"Adopt(name={self.name!r})"


def host_and_port(address: str) -> tuple[str, int] | None:
    """`127.0.0.1:80` or `[::1]:80`; None for anything else."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


_decode_found = msgspec.json.Decoder(list[Any])


async def discovered(
    services: Services, org_id: uuid.UUID, gateway_id: uuid.UUID | None = None
) -> list[DiscoveredDeviceOut]:
    """The latest successful scan of each of the organisation's gateways, checked entries."""
    args: list[Any] = [org_id, f"$.found[0 to {MAX_PER_GATEWAY - 1}]"]
    where = "c.org_id = $1 AND c.type = 'discover' AND c.status = 'SUCCESS'"
    if gateway_id is not None:
        args.append(gateway_id)
        where += " AND c.gateway_id = $3"
    async with services.connection() as conn:
        scans = await conn.fetch(
            "SELECT DISTINCT ON (c.gateway_id) c.id, c.gateway_id, c.finished_at,"
            " coalesce(jsonb_path_query_array(c.result, $2::jsonpath), '[]') AS found"
            f" FROM gateway_commands c WHERE {where}"
            " ORDER BY c.gateway_id, c.finished_at DESC, c.id DESC",
            *args,
        )
        devices = await conn.fetch(
            "SELECT id, gateway_id, vendor, host, port FROM devices"
            " WHERE org_id = $1 AND gateway_id = ANY($2::uuid[]) AND host IS NOT NULL",
            org_id,
            [scan["gateway_id"] for scan in scans],
        )
    adopted = {
        (row["gateway_id"], row["vendor"], row["host"], row["port"]): row["id"] for row in devices
    }
    items: list[DiscoveredDeviceOut] = []
    for scan in scans:
        seen: set[tuple[str, str, int]] = set()
        for entry in _decode_found.decode(scan["found"]):
            try:
                reported = msgspec.convert(entry, _Reported)
            except msgspec.ValidationError:
                continue
            where_found = host_and_port(reported.address)
            if where_found is None or (reported.vendor, *where_found) in seen:
                continue
            seen.add((reported.vendor, *where_found))
            host, port = where_found
            items.append(
                DiscoveredDeviceOut(
                    id=uuid.uuid5(scan["id"], f"{reported.vendor}|{host}|{port}"),
                    gateway_id=scan["gateway_id"],
                    vendor=reported.vendor,
                    host=host,
                    port=port,
                    model=reported.model,
                    serial=reported.serial,
                    activated=reported.activated,
                    found_at=scan["finished_at"],
                    device_id=adopted.get((scan["gateway_id"], reported.vendor, host, port)),
                )
            )
    return items


class DiscoveredDeviceController(Controller):
    path = "/v2/devices/discovered"
    tags = ["devices"]

    @get("/", responses=ADMIN_ERRORS)
    async def list_discovered_devices(
        self,
        org_id: OrgId,
        services: ServicesDep,
        gateway_id: FromQuery[uuid.UUID | None] = None,
    ) -> DiscoveredDevicePage:
        """What each gateway's latest `discover` command found; adopt one with
        `POST /v2/devices/discovered/{id}/adopt`."""
        items = await discovered(services, org_id, gateway_id)
        return DiscoveredDevicePage(items=items[:MAX_LISTED], truncated=len(items) > MAX_LISTED)

    @post(
        "/{discovered_id:uuid}/adopt",
        status_code=201,
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.FLEET),
    )
    async def adopt_discovered_device(
        self,
        org_id: OrgId,
        services: ServicesDep,
        discovered_id: FromPath[uuid.UUID],
        data: JSONBody[Adopt],
    ) -> DeviceOut:
        """Make a device of a discovered terminal: vendor, host and port from the scan."""
        found = next((d for d in await discovered(services, org_id) if d.id == discovered_id), None)
        if found is None:
            raise NotFound(f"discovered_id: no discovered device {discovered_id}")
        if found.device_id is not None:
            raise Conflict(f"discovered_id: already device {found.device_id} on its gateway")
        await check_gateway_takes_devices(org_id, found.gateway_id)
        create = DeviceCreate(
            gateway_id=found.gateway_id,
            name=data.name,
            host=found.host,
            port=found.port,
            username=data.username,
            password=data.password,
            scheme=data.scheme,
            enabled=data.enabled,
        )
        return await add_reached_device(
            services,
            org_id,
            create,
            vendor=found.vendor,
            action="device.adopt",
            source={"discovered_id": str(discovered_id), "serial": found.serial},
        )
