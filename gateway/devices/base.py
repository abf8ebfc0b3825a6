"""The device seam: one Protocol every vendor adapter implements, one error, one registry.

    DeviceError            everything a device call can fail with; `kind` names the cause
    ├── AUTH_FAILED        wrong user name or password (the device answered 401)
    ├── LOCKED             too many bad logins; even the right password fails until unlock
    ├── BUSY               the device said it is busy (statusCode 2); try again later
    ├── NOT_SUPPORTED      authenticated but refused (403: notSupport, invalidOperation, ...)
    ├── BAD_REQUEST        the device rejected what we sent (statusCode 5/6, HTTP 400)
    ├── DEVICE_FAULT       the device reported an internal error (statusCode 3, HTTP 5xx)
    ├── UNREACHABLE        no connection (refused, reset, DNS); the device may be off
    ├── TIMEOUT            connected, but no answer within the client timeout
    ├── REBOOTING          unreachable shortly after we asked it to reboot
    └── PROTOCOL           an answer we could not understand

A new vendor is one module that calls `register("vendor", factory)` at import.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

import msgspec

from protocol.control import DeviceConfig

DoorAction = Literal["open", "close", "always_open", "always_close"]
DOOR_ACTIONS: tuple[DoorAction, ...] = ("open", "close", "always_open", "always_close")
ALL_DOORS = 65535


class DeviceErrorKind(enum.StrEnum):
    AUTH_FAILED = "auth_failed"
    LOCKED = "locked"
    BUSY = "busy"
    NOT_SUPPORTED = "not_supported"
    BAD_REQUEST = "bad_request"
    DEVICE_FAULT = "device_fault"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    REBOOTING = "rebooting"
    PROTOCOL = "protocol"


class DeviceError(Exception):
    """A device call failed; `str(error)` is a sentence an operator can act on."""

    def __init__(
        self,
        kind: DeviceErrorKind,
        message: str,
        *,
        http_status: int | None = None,
        status_code: int | None = None,
        sub_status_code: str | None = None,
        error_code: int | None = None,
        unlock_in_s: int | None = None,
        retries_left: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.http_status = http_status
        self.status_code = status_code
        self.sub_status_code = sub_status_code
        self.error_code = error_code
        self.unlock_in_s = unlock_in_s
        self.retries_left = retries_left

    def __repr__(self) -> str:
        return f"DeviceError({self.kind.value!r}, {self.message!r})"


class DeviceInfo(msgspec.Struct, kw_only=True):
    serial_number: str
    model: str = ""
    device_name: str = ""
    device_id: str = ""
    mac_address: str = ""
    firmware_version: str = ""
    firmware_release_date: str = ""
    device_type: str = ""
    sub_device_type: str = ""
    door_count: int | None = None


class AccessEvent(msgspec.Struct, kw_only=True):
    """One entry of the device's event log; `serial_no` increases per device."""

    serial_no: int
    major: int
    minor: int
    time: dt.datetime
    name: str | None = None
    employee_no: str | None = None
    card_no: str | None = None
    door: int | None = None
    verify_mode: str | None = None


class UserRecord(msgspec.Struct, kw_only=True):
    employee_no: str
    name: str = ""
    user_type: str = "normal"
    enabled: bool = True
    begin_time: str = "2020-01-01T00:00:00"
    end_time: str = "2037-12-31T23:59:59"
    doors: list[int] = msgspec.field(default_factory=lambda: [1])
    # Cards the user opens doors with; add_user makes the terminal hold exactly these.
    card_nos: list[str] = msgspec.field(default_factory=list)
    # True: a user the terminal already has is updated instead of refused.
    replace: bool = False
    # A single access card, for terminals that take one card with the user (ZKTeco); the
    # first of card_nos is used when it is unset.
    card_no: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class DeviceAdapter(Protocol):
    """What the gateway needs from a terminal. Every method raises only DeviceError."""

    async def device_info(self) -> DeviceInfo: ...

    async def status(self) -> dict[str, Any]: ...

    async def door(self, door_no: int, action: DoorAction) -> dict[str, Any]: ...

    async def reboot(self) -> dict[str, Any]: ...

    async def get_time(self) -> dict[str, Any]: ...

    async def sync_time(self) -> dict[str, Any]: ...

    async def add_user(self, user: UserRecord) -> dict[str, Any]: ...

    async def delete_user(self, employee_no: str) -> dict[str, Any]: ...

    async def search_users(self, employee_nos: list[str] | None = None) -> list[UserRecord]: ...

    async def events_since(self, serial_no: int, *, limit: int = 1000) -> list[AccessEvent]:
        """Events with a serialNo above `serial_no`, oldest first, at most `limit`."""
        ...

    async def aclose(self) -> None: ...


AdapterFactory = Callable[[DeviceConfig], DeviceAdapter]
_FACTORIES: dict[str, AdapterFactory] = {}


def register(vendor: str, factory: AdapterFactory) -> None:
    _FACTORIES[vendor.lower()] = factory


def create_adapter(config: DeviceConfig) -> DeviceAdapter:
    """An adapter for `config.vendor`; ValueError names the vendors that exist."""
    _load_builtin_vendors()
    factory = _FACTORIES.get(config.vendor.lower())
    if factory is None:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise ValueError(f"unknown device vendor {config.vendor!r}; supported: {known}")
    return factory(config)


def _load_builtin_vendors() -> None:
    # Imported lazily: vendor modules import this one to register themselves.
    from gateway.devices import biostar, hikvision  # noqa: F401
