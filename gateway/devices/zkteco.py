"""ZKTeco terminals that push to the gateway: the shared hub, one adapter per terminal.

A PUSH terminal is the HTTP client (see iclock.py), so nothing here connects anywhere. The
hub knows the configured terminals by serial number; `zkteco_server.py` serves their
requests against it. An adapter is what the device manager sees: its commands are queued
on the terminal's record and answered when the terminal polls and reports the result.

Punches (ATTLOG lines) become `device_event` logs whose id is a uuid5 over serial, PIN,
time, status, verify and work code, so a re-sent upload makes duplicates the backend drops.
The upload is answered `OK` only after the logs are committed to the gateway buffer.
"""

from __future__ import annotations

import collections
import datetime as dt
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
import trio

from gateway.devices import iclock
from gateway.devices.base import (
    AccessEvent,
    AdapterFactory,
    DeviceAdapter,
    DeviceError,
    DeviceErrorKind,
    DeviceInfo,
    DoorAction,
    UserRecord,
)
from protocol.agent import DeviceEvent
from protocol.control import DeviceConfig, SeenDevice

log = structlog.get_logger(__name__)

VENDOR = "zkteco"
# Fixed forever: changing it would give every already-uploaded punch a second id.
PUNCH_NAMESPACE = uuid.UUID("2b0f7c1e-5d43-5e8a-a4f6-91c3e0d7b258")
MAX_PENDING_COMMANDS = 64
COMMANDS_PER_POLL = 16
MAX_UNKNOWN_SERIALS = 256
# A terminal that has not polled for this long is reported offline.
OFFLINE_AFTER_S = 120.0
# Punch times outside these years are a broken clock, not a punch.
_YEARS = (2000, 2100)

# SDK convention for the punch state key; the terminal can be remapped, the raw code is kept.
ATTENDANCE_STATUS = {
    0: "checkIn",
    1: "checkOut",
    2: "breakOut",
    3: "breakIn",
    4: "overtimeIn",
    5: "overtimeOut",
}
# ATTLOG holds only accepted verifications, so every line is an access-granted event. The
# minor is the Hikvision code of the same method (what attendance reads for every vendor);
# verify_mode keeps the terminal's raw code, since servers disagree on its table.
_PASS = 5
_MINOR_BY_VERIFY = {1: 38, 3: 181, 4: 1, 6: 1, 10: 40, 11: 2, 15: 75, 16: 75, 2: 101}
_GENERIC_PASS = 1

AppendLogs = Callable[[str, list[Any]], Awaitable[object]]


def punch_id(serial: str, record: iclock.AttLogRecord) -> uuid.UUID:
    key = "\t".join(
        (
            serial,
            record.pin,
            record.time.strftime("%Y-%m-%d %H:%M:%S"),
            str(record.status),
            str(record.verify),
            record.work_code,
        )
    )
    return uuid.uuid5(PUNCH_NAMESPACE, key)


def punch_event(
    device_id: str, serial: str, zone: dt.tzinfo, record: iclock.AttLogRecord
) -> DeviceEvent | None:
    """The log for one ATTLOG line; None when its time cannot be a real punch."""
    if not _YEARS[0] <= record.time.year < _YEARS[1]:
        return None
    event_id = punch_id(serial, record)
    return DeviceEvent(
        id=event_id,
        ts=record.time.replace(tzinfo=zone).astimezone(dt.UTC),
        device_id=device_id,
        # The terminal numbers nothing; 53 bits of the id keep (device, serial_no) unique
        # and exact in every JSON reader.
        serial_no=int.from_bytes(event_id.bytes[:8], "big") >> 11,
        major=_PASS,
        minor=_MINOR_BY_VERIFY.get(record.verify, _GENERIC_PASS),
        employee_no=record.pin,
        verify_mode=str(record.verify),
        attendance_status=ATTENDANCE_STATUS.get(record.status),
    )


def zone_of(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time_zone {name!r} is not an IANA time zone") from None


def utc_offset_minutes(zone: dt.tzinfo, at: dt.datetime) -> int:
    offset = at.astimezone(zone).utcoffset() or dt.timedelta(0)
    return int(offset.total_seconds() // 60)


# ---- one terminal -------------------------------------------------------------------------


@dataclass(eq=False)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    answer: iclock.CommandReturn | None = None


class PushTerminal:
    """A configured terminal's state: where it was last seen and its command queue."""

    def __init__(self, config: DeviceConfig) -> None:
        self.device_id = config.device_id
        self.name = config.name
        self.serial = config.serial
        self.zone = zone_of(config.time_zone)
        self.last_seen: float | None = None
        self.address = ""
        self.info: dict[str, str] = {}
        self._pending: collections.deque[tuple[str, str]] = collections.deque()
        self._waiters: dict[str, _Waiter] = {}

    def __repr__(self) -> str:
        return f"PushTerminal({self.serial!r}, device_id={self.device_id!r})"

    def touch(self, address: str, info: dict[str, str] | None = None) -> None:
        self.last_seen = trio.current_time()
        self.address = address
        if info:
            self.info.update(info)

    def take_commands(self) -> list[tuple[str, str]]:
        """Commands for this poll; each leaves the queue, so it is handed out at most once."""
        taken: list[tuple[str, str]] = []
        while self._pending and len(taken) < COMMANDS_PER_POLL:
            taken.append(self._pending.popleft())
        return taken

    def resolve(self, answer: iclock.CommandReturn) -> bool:
        """Record a result; a repeated or unknown id changes nothing."""
        waiter = self._waiters.get(answer.command_id)
        if waiter is None or waiter.answer is not None:
            return False
        waiter.answer = answer
        waiter.done.set()
        return True

    async def call(self, text: str) -> iclock.CommandReturn:
        """Queue `text` for the next poll and wait for the terminal's answer.

        Cancelled (the command expired or was cancelled) before a poll took it, it is
        withdrawn, so it can never run later."""
        if len(self._pending) >= MAX_PENDING_COMMANDS:
            raise DeviceError(
                DeviceErrorKind.BUSY,
                f"terminal {self.serial} already has {MAX_PENDING_COMMANDS} commands waiting "
                "for its next poll; try again once it has taken them",
            )
        command_id = uuid.uuid4().hex[:16]
        item = (command_id, text)
        waiter = self._waiters[command_id] = _Waiter()
        self._pending.append(item)
        try:
            await waiter.done.wait()
        finally:
            del self._waiters[command_id]
            if item in self._pending:
                self._pending.remove(item)
        assert waiter.answer is not None
        return waiter.answer


# ---- the hub ------------------------------------------------------------------------------


class ZkPushHub:
    """Configured terminals by serial, and the unknown ones that knocked (reported as seen)."""

    def __init__(
        self,
        append_logs: AppendLogs,
        *,
        options: iclock.Options | None = None,
        offline_after_s: float = OFFLINE_AFTER_S,
        utcnow: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.append_logs = append_logs
        self.options = options or iclock.Options()
        self.offline_after_s = offline_after_s
        self.utcnow = utcnow
        self._terminals: dict[str, PushTerminal] = {}
        self._unknown: collections.OrderedDict[str, SeenDevice] = collections.OrderedDict()
        self._unreported: set[str] = set()
        self.seen_changed = trio.Event()

    def __repr__(self) -> str:
        return f"ZkPushHub(terminals={sorted(self._terminals)})"

    def attach(self, config: DeviceConfig) -> PushTerminal:
        if not iclock.SERIAL_PATTERN.match(config.serial):
            raise ValueError("serial: a ZKTeco serial number is 1-64 letters, digits, '-' or '_'")
        terminal = PushTerminal(config)
        self._terminals[config.serial] = terminal
        self._unknown.pop(config.serial, None)
        self._unreported.discard(config.serial)
        return terminal

    def detach(self, terminal: PushTerminal) -> None:
        if self._terminals.get(terminal.serial) is terminal:
            del self._terminals[terminal.serial]

    def terminal(self, serial: str) -> PushTerminal | None:
        return self._terminals.get(serial)

    def saw_unknown(self, serial: str, address: str, info: dict[str, str]) -> None:
        now = self.utcnow()
        seen = self._unknown.pop(serial, None)
        if seen is None:
            log.warning("zkteco.unknown_serial", serial=serial, address=address)
            seen = SeenDevice(vendor=VENDOR, serial=serial, first_seen_at=now, last_seen_at=now)
            self._unreported.add(serial)
        seen.last_seen_at = now
        seen.address = address[:256]
        seen.model = info.get("devicetype", seen.model)[:256]
        seen.firmware = info.get("pushver", seen.firmware)[:256]
        self._unknown[serial] = seen
        # A scan of made-up serials must not grow the gateway without bound.
        while len(self._unknown) > MAX_UNKNOWN_SERIALS:
            oldest, _ = self._unknown.popitem(last=False)
            self._unreported.discard(oldest)
        if self._unreported:
            self.seen_changed.set()

    def take_unreported(self) -> list[SeenDevice]:
        """Unknown terminals seen since the last call, each once."""
        taken = [self._unknown[s] for s in self._unreported if s in self._unknown]
        self._unreported.clear()
        self.seen_changed = trio.Event()
        return taken

    def handshake_options(self, terminal: PushTerminal) -> iclock.Options:
        minutes = utc_offset_minutes(terminal.zone, self.utcnow())
        return msgspec.structs.replace(self.options, time_zone_minutes=minutes)


# ---- the adapter --------------------------------------------------------------------------


_ERROR_KINDS = {
    -1: (DeviceErrorKind.BAD_REQUEST, "the terminal refused a parameter"),
    -10: (DeviceErrorKind.BAD_REQUEST, "the terminal has no such user"),
    -1002: (DeviceErrorKind.NOT_SUPPORTED, "the terminal does not support this command"),
    -1005: (DeviceErrorKind.BUSY, "the terminal is busy"),
}


class ZkTecoAdapter:
    """A DeviceAdapter for one pushing terminal: commands wait for its next poll."""

    def __init__(self, config: DeviceConfig, hub: ZkPushHub) -> None:
        self._hub = hub
        self._terminal = hub.attach(config)

    def __repr__(self) -> str:
        return f"ZkTecoAdapter({self._terminal.serial!r})"

    async def aclose(self) -> None:
        self._hub.detach(self._terminal)

    async def _run(self, text: str, what: str) -> dict[str, Any]:
        answer = await self._terminal.call(text)
        if answer.code == 0:
            return {"return": 0}
        kind, reason = _ERROR_KINDS.get(
            answer.code, (DeviceErrorKind.DEVICE_FAULT, "the terminal reported an error")
        )
        raise DeviceError(
            kind,
            f"{what}: {reason} (Return={answer.code})",
            error_code=answer.code,
        )

    async def device_info(self) -> DeviceInfo:
        terminal = self._terminal
        if terminal.last_seen is None:
            raise DeviceError(
                DeviceErrorKind.UNREACHABLE,
                f"terminal {terminal.serial} has not contacted the gateway yet; set its "
                "cloud server address to the gateway's TD_ZK_LISTEN address",
            )
        silent_s = trio.current_time() - terminal.last_seen
        if silent_s > self._hub.offline_after_s:
            raise DeviceError(
                DeviceErrorKind.UNREACHABLE,
                f"terminal {terminal.serial} has not polled the gateway for {silent_s:.0f} s; "
                "check that it is powered and on the network",
            )
        return DeviceInfo(
            serial_number=terminal.serial,
            model=terminal.info.get("devicetype", ""),
            device_name=terminal.name,
            firmware_version=terminal.info.get("firmware", terminal.info.get("pushver", "")),
            device_type="attendance",
        )

    async def status(self) -> dict[str, Any]:
        info = await self.device_info()
        terminal = self._terminal
        assert terminal.last_seen is not None
        return {
            "system": {
                "address": terminal.address,
                "last_poll_s_ago": round(trio.current_time() - terminal.last_seen, 1),
                **terminal.info,
            },
            "doors": None,
            "serial_number": info.serial_number,
        }

    async def door(self, door_no: int, action: DoorAction) -> dict[str, Any]:
        if action != "open":
            raise DeviceError(
                DeviceErrorKind.NOT_SUPPORTED,
                f"door {door_no} {action}: attendance terminals can only open the lock",
            )
        await self._run("AC_UNLOCK", f"door {door_no} open")
        return {"door": door_no, "action": action}

    async def reboot(self) -> dict[str, Any]:
        await self._run("REBOOT", "reboot")
        return {"rebooting": True}

    async def get_time(self) -> dict[str, Any]:
        raise DeviceError(
            DeviceErrorKind.NOT_SUPPORTED,
            "get time: a PUSH terminal does not report its clock; it takes the gateway's",
        )

    async def sync_time(self) -> dict[str, Any]:
        # The terminal sets its clock from the Date header of our answers; CHECK makes it
        # fetch its options (and that header, and the zone offset) again now.
        await self._run("CHECK", "sync time")
        now = self._hub.utcnow()
        zone = self._terminal.zone
        return {
            "set_to_utc": now.isoformat(timespec="seconds"),
            "time_zone": str(zone),
            "utc_offset_minutes": utc_offset_minutes(zone, now),
        }

    async def add_user(self, user: UserRecord) -> dict[str, Any]:
        card = user.card_no or (user.card_nos[0] if user.card_nos else "")
        try:
            text = iclock.user_command(user.employee_no, user.name, card)
        except ValueError as exc:
            raise DeviceError(DeviceErrorKind.BAD_REQUEST, f"add user: {exc}") from None
        await self._run(text, f"add user {user.employee_no}")
        return {"employee_no": user.employee_no, "card_no": card or None}

    async def delete_user(self, employee_no: str) -> dict[str, Any]:
        try:
            text = iclock.delete_user_command(employee_no)
        except ValueError as exc:
            raise DeviceError(DeviceErrorKind.BAD_REQUEST, f"delete user: {exc}") from None
        await self._run(text, f"delete user {employee_no}")
        return {"employee_no": employee_no, "deleted": True}

    async def search_users(self, employee_nos: list[str] | None = None) -> list[UserRecord]:
        raise DeviceError(
            DeviceErrorKind.NOT_SUPPORTED,
            "user search: PUSH terminals upload their users instead of answering searches",
        )

    async def events_since(self, serial_no: int, *, limit: int = 1000) -> list[AccessEvent]:
        # Punches arrive by push and are committed as they come (zkteco_server.py).
        return []


def adapter_factory(hub: ZkPushHub | None, fallback: AdapterFactory) -> AdapterFactory:
    """The gateway's factory: pushing terminals attach to `hub`, other vendors as registered."""

    def create(config: DeviceConfig) -> DeviceAdapter:
        if config.vendor.lower() != VENDOR:
            return fallback(config)
        if hub is None:
            raise ValueError(
                "ZKTeco terminals push to the gateway: set TD_ZK_LISTEN (--zk-listen) "
                "to the address they should reach"
            )
        return ZkTecoAdapter(config, hub)

    return create
