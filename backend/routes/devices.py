"""Devices (access terminals) driven by a gateway; the password is stored encrypted, never shown.

Hikvision terminals are reached at host:port with a user and password; ZKTeco terminals
push to the gateway and are known by serial number (no host, no password). Terminals that
knocked on a gateway without being configured are listed at `/v2/devices/seen`.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Meta

from backend.accounts.roles import Permission, needs
from backend.audit import record
from backend.errors import Conflict, InvalidRequest
from backend.logging import get_logger
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    error_responses,
    keyset_rows,
    next_cursor,
    org_row,
)
from backend.services import Services
from backend.tables import Device, GatewayInstance, SeenDevice
from protocol.bounds import NO_NUL

log = get_logger("backend.admin")

ShortText = Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_NUL)]
Password = Annotated[str, Meta(max_length=256, pattern=NO_NUL)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Scheme = Literal["http", "https"]
Serial = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TimeZone = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]


class DeviceCreate(msgspec.Struct, kw_only=True, tag_field="vendor", tag="hikvision"):
    gateway_id: uuid.UUID
    name: ShortText
    host: ShortText
    port: Port = 80
    username: ShortText
    password: Password
    scheme: Scheme = "http"
    enabled: bool = True

    def __repr__(self) -> str:  # never print the password, even in a traceback
        return f"DeviceCreate(name={self.name!r}, host={self.host!r})"


class BioStarCreate(DeviceCreate, tag="biostar"):
    """A Suprema BioStar 2 server (its doors are the device's doors); same fields."""


class PushDeviceCreate(msgspec.Struct, kw_only=True, tag_field="vendor", tag="zkteco"):
    """A terminal that connects to the gateway: found by its serial number."""

    gateway_id: uuid.UUID
    name: ShortText
    serial: Serial
    # The zone the terminal's clock shows (its punches carry local wall-clock time).
    time_zone: TimeZone = "UTC"
    enabled: bool = True


class DeviceChange(msgspec.Struct, kw_only=True):
    name: ShortText | None = None
    host: ShortText | None = None
    port: Port | None = None
    username: ShortText | None = None
    password: Password | None = None
    scheme: Scheme | None = None
    enabled: bool | None = None
    serial: Serial | None = None
    time_zone: TimeZone | None = None

    def __repr__(self) -> str:
        return "DeviceChange(...)"


class DeviceOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    gateway_id: uuid.UUID
    vendor: str
    name: str
    host: str | None
    port: int | None
    scheme: str
    username: str | None
    serial: str | None = None
    time_zone: str = "UTC"
    enabled: bool
    status: str
    status_checked_at: dt.datetime | None
    status_info: dict[str, Any] | None
    status_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class DevicePage(msgspec.Struct):
    items: list[DeviceOut]
    next_cursor: str | None


class SeenDeviceOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    gateway_id: uuid.UUID
    vendor: str
    serial: str
    address: str
    model: str
    firmware: str
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


class SeenDevicePage(msgspec.Struct):
    items: list[SeenDeviceOut]
    next_cursor: str | None


def _check_time_zone(name: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            f"time_zone: {name!r} is not an IANA time zone (e.g. Europe/Berlin)"
        ) from None


async def _serial_taken(gateway_id: uuid.UUID, vendor: str, serial: str) -> bool:
    return bool(
        await Device.exists().where(
            (Device.gateway_id == gateway_id)
            & (Device.vendor == vendor)
            & (Device.serial == serial)
        )
    )


# The password column is left out on purpose: nothing that answers a client reads it.
_COLUMNS = (
    Device.id,
    Device.gateway_id,
    Device.vendor,
    Device.name,
    Device.host,
    Device.port,
    Device.scheme,
    Device.username,
    Device.serial,
    Device.time_zone,
    Device.enabled,
    Device.status,
    Device.status_checked_at,
    Device.status_info,
    Device.status_error,
    Device.created_at,
    Device.updated_at,
)


async def device_out(org_id: uuid.UUID, device_id: uuid.UUID) -> DeviceOut:
    row = await org_row(Device, org_id, device_id, "device", *_COLUMNS)
    return msgspec.convert(row, DeviceOut)


async def _enrol_staff(
    services: Services, org_id: uuid.UUID, device_id: uuid.UUID, gateway_id: uuid.UUID
) -> None:
    # Imported here: attendance's user commands are built on routes.commands, which imports
    # this module.
    from backend.attendance.terminals import enrol_everyone

    await enrol_everyone(services, org_id, device_id, gateway_id)


async def _push(services: Services, device_id: uuid.UUID, gateway_id: uuid.UUID) -> None:
    log.info("device changed", device_id=str(device_id), gateway_id=str(gateway_id))
    if services.control is not None:
        await services.control.device_changed(gateway_id, device_id)


async def check_gateway_takes_devices(org_id: uuid.UUID, gateway_id: uuid.UUID) -> None:
    gateway = (
        await GatewayInstance.select(GatewayInstance.disabled_at)
        .where((GatewayInstance.id == gateway_id) & (GatewayInstance.org_id == org_id))
        .first()
    )
    if gateway is None:
        raise InvalidRequest(f"gateway_id: no gateway {gateway_id} in this organisation")
    if gateway["disabled_at"] is not None:
        raise Conflict(
            f"gateway_id: gateway {gateway_id} is disabled; enable it before adding devices to it"
        )


async def add_reached_device(
    services: Services,
    org_id: uuid.UUID,
    data: DeviceCreate,
    *,
    vendor: str,
    action: str = "device.create",
    source: dict[str, Any] | None = None,
) -> DeviceOut:
    """Store a terminal the gateway reaches at host:port (its gateway already checked);
    `source` goes into the audit event (what it was adopted from)."""
    device_id = uuid.uuid4()
    async with Device._meta.db.transaction():
        await Device.insert(
            Device(
                id=device_id,
                org_id=org_id,
                gateway_id=data.gateway_id,
                vendor=vendor,
                name=data.name,
                host=data.host,
                port=data.port,
                scheme=data.scheme,
                username=data.username,
                password_encrypted=services.secrets.encrypt(data.password),
                enabled=data.enabled,
            )
        )
        created = msgspec.to_builtins(await device_out(org_id, device_id))
        await record(None, action, "device", device_id, after={**created, **(source or {})})
    await _push(services, device_id, data.gateway_id)
    if data.enabled:
        await _enrol_staff(services, org_id, device_id, data.gateway_id)
    return await device_out(org_id, device_id)


class DeviceController(Controller):
    path = "/v2/devices"
    tags = ["devices"]

    @post(
        "/",
        status_code=201,
        responses=error_responses(400, 401, 403, 404, 409),
        opt=needs(Permission.FLEET),
    )
    async def create_device(
        self,
        org_id: OrgId,
        services: ServicesDep,
        data: JSONBody[DeviceCreate | BioStarCreate | PushDeviceCreate],
    ) -> DeviceOut:
        await check_gateway_takes_devices(org_id, data.gateway_id)
        device_id = uuid.uuid4()
        if isinstance(data, PushDeviceCreate):
            _check_time_zone(data.time_zone)
            if await _serial_taken(data.gateway_id, "zkteco", data.serial):
                raise Conflict(f"serial: {data.serial} is already a device on this gateway")
            async with Device._meta.db.transaction():
                await Device.insert(
                    Device(
                        id=device_id,
                        org_id=org_id,
                        gateway_id=data.gateway_id,
                        vendor="zkteco",
                        name=data.name,
                        serial=data.serial,
                        time_zone=data.time_zone,
                        enabled=data.enabled,
                    )
                )
                await SeenDevice.delete().where(
                    (SeenDevice.gateway_id == data.gateway_id)
                    & (SeenDevice.vendor == "zkteco")
                    & (SeenDevice.serial == data.serial)
                )
                await record(
                    None,
                    "device.create",
                    "device",
                    device_id,
                    after=await device_out(org_id, device_id),
                )
            await _push(services, device_id, data.gateway_id)
            if data.enabled:
                await _enrol_staff(services, org_id, device_id, data.gateway_id)
            return await device_out(org_id, device_id)
        return await add_reached_device(
            services, org_id, data, vendor=str(type(data).__struct_config__.tag)
        )

    @get("/", responses=ADMIN_ERRORS)
    async def list_devices(
        self,
        org_id: OrgId,
        gateway_id: FromQuery[uuid.UUID | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> DevicePage:
        query = Device.select(*_COLUMNS).where(Device.org_id == org_id)
        if gateway_id is not None:
            query = query.where(Device.gateway_id == gateway_id)
        rows = await keyset_rows(query, Device.created_at, Device.id, cursor, limit)
        return DevicePage(
            items=[msgspec.convert(row, DeviceOut) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @get("/seen", responses=ADMIN_ERRORS)
    async def list_seen_devices(
        self,
        org_id: OrgId,
        gateway_id: FromQuery[uuid.UUID | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> SeenDevicePage:
        """Terminals a gateway refused because no device has their serial; adopt one with
        `POST /v2/devices` and it leaves this list."""
        query = SeenDevice.select().where(SeenDevice.org_id == org_id)
        if gateway_id is not None:
            query = query.where(SeenDevice.gateway_id == gateway_id)
        rows = await keyset_rows(query, SeenDevice.first_seen_at, SeenDevice.id, cursor, limit)
        return SeenDevicePage(
            items=[msgspec.convert(row, SeenDeviceOut) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "first_seen_at"),
        )

    @get("/{device_id:uuid}", responses=ADMIN_ERRORS)
    async def get_device(self, org_id: OrgId, device_id: FromPath[uuid.UUID]) -> DeviceOut:
        return await device_out(org_id, device_id)

    @patch("/{device_id:uuid}", responses=ADMIN_ERRORS, opt=needs(Permission.FLEET))
    async def change_device(
        self,
        org_id: OrgId,
        services: ServicesDep,
        device_id: FromPath[uuid.UUID],
        data: JSONBody[DeviceChange],
    ) -> DeviceOut:
        current = await device_out(org_id, device_id)
        changes: dict[Any, Any] = {Device.updated_at: dt.datetime.now(dt.UTC)}
        for column in (Device.name, Device.host, Device.port, Device.username):
            value = getattr(data, column._meta.name)
            if value is not None:
                changes[column] = value
        if data.scheme is not None:
            changes[Device.scheme] = data.scheme
        if data.enabled is not None:
            changes[Device.enabled] = data.enabled
        if data.password is not None:
            changes[Device.password_encrypted] = services.secrets.encrypt(data.password)
        if data.time_zone is not None:
            _check_time_zone(data.time_zone)
            changes[Device.time_zone] = data.time_zone
        if data.serial is not None and data.serial != current.serial:
            if current.serial is None:
                raise InvalidRequest(f"serial: {current.vendor} devices are not found by serial")
            if await _serial_taken(current.gateway_id, current.vendor, data.serial):
                raise Conflict(f"serial: {data.serial} is already a device on this gateway")
            changes[Device.serial] = data.serial
        async with Device._meta.db.transaction():
            await Device.update(changes).where(Device.id == device_id)
            after = msgspec.to_builtins(await device_out(org_id, device_id))
            if data.password is not None:
                after["password"] = "changed"
            await record(None, "device.update", "device", device_id, before=current, after=after)
        await _push(services, device_id, current.gateway_id)
        return await device_out(org_id, device_id)

    @delete(
        "/{device_id:uuid}", status_code=204, responses=ADMIN_ERRORS, opt=needs(Permission.FLEET)
    )
    async def delete_device(
        self, org_id: OrgId, services: ServicesDep, device_id: FromPath[uuid.UUID]
    ) -> None:
        current = await device_out(org_id, device_id)
        async with Device._meta.db.transaction():
            await Device.delete().where(Device.id == device_id)
            await record(None, "device.delete", "device", device_id, before=current)
        log.info("device deleted", device_id=str(device_id), gateway_id=str(current.gateway_id))
        if services.control is not None:
            await services.control.device_deleted(current.gateway_id, device_id)
