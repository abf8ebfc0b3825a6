"""The gateway's device runtime: configured terminals, their commands, health and events.

Access events become `device_event` logs with an id derived from the terminal's serial
number and the event's serialNo, so reading an event twice never makes a second log. The
stored cursor (last serialNo per device) advances only after `append_logs` returned, which
the gateway does after its durable commit: a crash or a failed append re-reads, never skips.

Terminals with an event stream (streams.py) deliver events as they happen: the next
serialNo is appended at once, anything else makes the event search fill the gap in order.
One lock per device keeps the stream and the search from moving the cursor together.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import apsw
import msgspec
import structlog
import trio

from gateway.devices import streams
from gateway.devices.base import (
    AccessEvent,
    AdapterFactory,
    DeviceAdapter,
    DeviceError,
    DeviceErrorKind,
    DoorAction,
    UserRecord,
    create_adapter,
)
from gateway.sealing import RESEND_REASON, SecretBox, Unsealable
from protocol.agent import DeviceEvent, Log
from protocol.control import (
    DEVICE_COMMAND_TYPES,
    Command,
    CommandResult,
    CommandStatus,
    DeviceConfig,
    DeviceState,
)

log = structlog.get_logger(__name__)

# Fixed forever: changing it would give every already-uploaded event a second id.
DEVICE_EVENT_NAMESPACE = uuid.UUID("6f1d8a52-3c4e-5b7a-9e21-d4c0b8a7e613")
EVENTS_PER_APPEND = 500
# How long a command for a device we do not know yet waits for the device's config.
NEW_DEVICE_GRACE_S = 5.0
# How long terminals lock a login out when their 401 does not say (1800 s seen).
DEFAULT_UNLOCK_S = 1800
_SHORT_TEXT = 256
_REMEMBERED_RESULTS = 1000
_DOOR_COMMANDS: dict[str, DoorAction] = {
    "open_door": "open",
    "close_door": "close",
    "always_open": "always_open",
    "always_close": "always_close",
}

AppendLogs = Callable[[str, list[Log]], Awaitable[object]]
ReportState = Callable[[DeviceState], Awaitable[object]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_configs (
    device_id TEXT PRIMARY KEY,
    -- DeviceConfig as JSON, password included and so sealed (gateway/sealing.py) when the
    -- manager has a SecretBox: the credentials are kept nowhere else on the gateway.
    config BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS device_cursors (
    device_id TEXT PRIMARY KEY,
    device_serial TEXT NOT NULL,
    last_serial_no INTEGER NOT NULL
);
"""


def device_event_id(device_serial: str, serial_no: int) -> uuid.UUID:
    return uuid.uuid5(DEVICE_EVENT_NAMESPACE, f"{device_serial}:{serial_no}")


def to_device_event(device_id: str, device_serial: str, event: AccessEvent) -> DeviceEvent:
    def short(value: str | None) -> str | None:
        return value[:_SHORT_TEXT] if value else None

    return DeviceEvent(
        id=device_event_id(device_serial, event.serial_no),
        ts=event.time,
        device_id=device_id,
        serial_no=event.serial_no,
        major=event.major,
        minor=event.minor,
        employee_no=short(event.employee_no),
        card_no=short(event.card_no),
        door=event.door if event.door is not None and event.door >= 0 else None,
        verify_mode=short(event.verify_mode),
        name=short(event.name),
    )


class DeviceManager:
    """Holds one adapter per enabled device; `run` polls them, `run_command` drives them."""

    def __init__(
        self,
        db: apsw.Connection,
        *,
        poll_interval_s: float = 60.0,
        event_interval_s: float = 10.0,
        adapter_factory: AdapterFactory = create_adapter,
        utcnow: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        box: SecretBox | None = None,
    ) -> None:
        self._db = db
        self._box = box
        self._poll_interval_s = poll_interval_s
        self._event_interval_s = event_interval_s
        self._adapter_factory = adapter_factory
        self._utcnow = utcnow
        self._configs: dict[str, DeviceConfig] = {}
        self._adapters: dict[str, DeviceAdapter] = {}
        self._setup_errors: dict[str, str] = {}
        self._serials: dict[str, str] = {}
        self._states: dict[str, DeviceState] = {}
        self._info_due: dict[str, float] = {}
        # Polling with bad credentials would lock the gateway's address out of the terminal
        # (and everyone behind the same address): after a 401 we stop until it can work.
        self._paused_until: dict[str, float] = {}
        self._results: OrderedDict[uuid.UUID, CommandResult] = OrderedDict()
        self._running: dict[uuid.UUID, trio.Event] = {}
        self._wake = trio.Event()
        self._config_changed = trio.Event()
        # Deleted and replaced configs (with their passwords) are overwritten, not left in
        # free pages of the file.
        db.execute("PRAGMA secure_delete=ON")
        self._event_locks: dict[str, trio.Lock] = {}
        # Set once the device answered with its current credentials (streams wait for it).
        self._reachable: dict[str, trio.Event] = {}
        self._append_logs: AppendLogs | None = None
        # Devices whose event stream is connected right now (the rest are polled only).
        self.streaming: set[str] = set()
        # The cursor is saved on the event loop after every streamed event. WAL without an
        # fsync per commit keeps that off the door commands' path, and it is safe: a cursor
        # update lost to a power cut only makes the search read events again (same ids),
        # and configs are re-sent by the backend on every connect.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        for device_id, blob in db.execute(
            "SELECT device_id, config FROM device_configs"
        ).fetchall():
            assert isinstance(device_id, str) and isinstance(blob, bytes)
            cfg = self._open_config(device_id, blob)
            if cfg is not None:
                self._install(cfg)

    def _seal_config(self, cfg: DeviceConfig) -> bytes:
        plain = msgspec.json.encode(cfg)
        return self._box.seal(plain) if self._box is not None else plain

    def _open_config(self, device_id: str, blob: bytes) -> DeviceConfig | None:
        """The stored config; one stored in clear by an older version is sealed now, one
        sealed with another API key is dropped (the backend sends it again at connect)."""
        if blob.startswith(b"{"):
            cfg = msgspec.json.decode(blob, type=DeviceConfig)
            if self._box is not None:
                self._db.execute(
                    "UPDATE device_configs SET config = ? WHERE device_id = ?",
                    (self._seal_config(cfg), device_id),
                )
            return cfg
        if self._box is None:
            return None
        try:
            return msgspec.json.decode(self._box.open(blob), type=DeviceConfig)
        except Unsealable:
            log.warning("device.config_dropped", device_id=device_id, reason=RESEND_REASON)
            self._db.execute("DELETE FROM device_configs WHERE device_id = ?", (device_id,))
            return None

    def __repr__(self) -> str:
        return f"DeviceManager(devices={sorted(self._configs)})"

    @property
    def device_ids(self) -> list[str]:
        return sorted(self._configs)

    def config(self, device_id: str) -> DeviceConfig | None:
        return self._configs.get(device_id)

    def describe(self) -> list[dict[str, Any]]:
        """The configured devices as the local API lists them: no passwords."""
        described = []
        for device_id in sorted(self._configs):
            cfg = self._configs[device_id]
            state = self._states.get(device_id)
            described.append(
                {
                    "id": device_id,
                    "name": cfg.name,
                    "vendor": cfg.vendor,
                    "host": cfg.host or None,
                    "port": cfg.port if cfg.host else None,
                    "serial": cfg.serial or self._serials.get(device_id) or None,
                    "enabled": cfg.enabled,
                    "online": state.online if state else None,
                    "checked_at": state.checked_at if state else None,
                    "error": self._setup_errors.get(device_id) or (state.error if state else None),
                }
            )
        return described

    # ---- configuration ------------------------------------------------------------------

    def _install(self, cfg: DeviceConfig) -> None:
        self._configs[cfg.device_id] = cfg
        self._reachable.pop(cfg.device_id, None)  # new credentials must prove themselves
        self._setup_errors.pop(cfg.device_id, None)
        if not cfg.enabled:
            return
        try:
            self._adapters[cfg.device_id] = self._adapter_factory(cfg)
        except ValueError as exc:
            self._setup_errors[cfg.device_id] = str(exc)
        self._info_due[cfg.device_id] = 0.0
        self._paused_until.pop(cfg.device_id, None)

    async def configure(self, cfg: DeviceConfig) -> None:
        """Add, change, disable or delete (cfg.deleted) a device; persists the config."""
        if not cfg.deleted and self._configs.get(cfg.device_id) == cfg:
            # The backend re-sends every config on reconnect. Starting over would log in
            # again with credentials that may just have failed, towards a lock-out.
            return
        old = self._adapters.pop(cfg.device_id, None)
        if old is not None:
            await old.aclose()
        self._configs.pop(cfg.device_id, None)
        if cfg.deleted:
            self._db.execute("DELETE FROM device_configs WHERE device_id = ?", (cfg.device_id,))
            log.info("device.deleted", device_id=cfg.device_id)
        else:
            self._db.execute(
                "INSERT INTO device_configs (device_id, config) VALUES (?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET config = excluded.config",
                (cfg.device_id, self._seal_config(cfg)),
            )
            self._install(cfg)
            log.info(
                "device.configured",
                device_id=cfg.device_id,
                vendor=cfg.vendor,
                host=cfg.host,
                enabled=cfg.enabled,
            )
        self._wake.set()
        self._config_changed.set()
        self._config_changed = trio.Event()

    async def aclose(self) -> None:
        adapters, self._adapters = self._adapters, {}
        for adapter in adapters.values():
            await adapter.aclose()

    # ---- commands -----------------------------------------------------------------------

    async def run_command(self, cmd: Command) -> CommandResult:
        """Run one device command; always returns a terminal result, never raises."""
        seen = self._results.get(cmd.id)
        if seen is not None:
            return seen  # a redelivered command must not open the door twice
        running = self._running.get(cmd.id)
        if running is not None:
            await running.wait()
            return self._results[cmd.id]
        self._running[cmd.id] = done = trio.Event()
        try:
            result = await self._run_command(cmd)
        except Exception as exc:
            # Every command must end in a terminal state, even on a bug of ours.
            log.exception("device.command_crashed", command_type=cmd.command_type)
            result = CommandResult(
                command_id=cmd.id,
                status=CommandStatus.FAILED,
                error=f"the gateway failed to run the command ({type(exc).__name__})",
            )
        finally:
            del self._running[cmd.id]
            done.set()
        self._results[cmd.id] = result
        while len(self._results) > _REMEMBERED_RESULTS:
            self._results.popitem(last=False)
        return result

    async def _config_for(self, device_id: str, *, within_s: float) -> DeviceConfig | None:
        # A device's config and its first command travel separately; the command can win.
        with trio.move_on_after(within_s):
            while device_id not in self._configs:
                await self._config_changed.wait()
        return self._configs.get(device_id)

    async def _run_command(self, cmd: Command) -> CommandResult:
        def failed(error: str, status: CommandStatus = CommandStatus.FAILED) -> CommandResult:
            return CommandResult(command_id=cmd.id, status=status, error=error)

        remaining = (cmd.expires_at - self._utcnow()).total_seconds()
        if remaining <= 0:
            return failed("the command expired before the gateway could run it",
                          CommandStatus.TIMED_OUT)  # fmt: skip
        if cmd.command_type not in DEVICE_COMMAND_TYPES:
            known = ", ".join(DEVICE_COMMAND_TYPES)
            return failed(f"unknown device command type {cmd.command_type!r}; known: {known}")
        try:
            call = _device_call(cmd.command_type, cmd.payload)
        except (msgspec.ValidationError, ValueError) as exc:
            return failed(f"bad payload for {cmd.command_type}: {exc}")
        device_id = cmd.device_id or ""
        cfg = await self._config_for(device_id, within_s=min(remaining, NEW_DEVICE_GRACE_S))
        if cfg is None:
            return failed(f"no device {device_id!r} is configured on this gateway")
        if device_id in self._setup_errors:
            return failed(f"device {cfg.name!r} cannot be used: {self._setup_errors[device_id]}")
        adapter = self._adapters.get(device_id)
        if adapter is None:
            return failed(f"device {cfg.name!r} is disabled")
        try:
            with trio.move_on_after(remaining) as scope:
                result = await call(adapter)
        except DeviceError as exc:
            log.warning(
                "device.command_failed",
                device_id=device_id,
                command_type=cmd.command_type,
                kind=exc.kind.value,
            )
            return CommandResult(
                command_id=cmd.id,
                status=CommandStatus.FAILED,
                error=f"device {cfg.name!r}: {exc}",
                result=_error_details(exc),
            )
        if scope.cancelled_caught:
            return failed(f"device {cfg.name!r} did not finish before the command expired",
                          CommandStatus.TIMED_OUT)  # fmt: skip
        if cmd.command_type == "reboot" or (
            cmd.command_type in _DOOR_COMMANDS and device_id not in self.streaming
        ):
            self._wake.set()  # the device logged events: pick them up now (a stream sends them)
        if cmd.command_type == "reboot":
            self._info_due[device_id] = 0.0
        self._paused_until.pop(device_id, None)  # the credentials work (again)
        return CommandResult(command_id=cmd.id, status=CommandStatus.SUCCESS, result=result)

    # ---- the long-running part ----------------------------------------------------------

    async def run(
        self,
        *,
        append_logs: AppendLogs,
        report_state: ReportState,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll health every poll_interval_s and pull events every event_interval_s (or
        right after a door command) until cancelled."""
        self._append_logs = append_logs
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_streams)
                while True:
                    async with trio.open_nursery() as cycle:
                        for device_id in list(self._adapters):
                            cycle.start_soon(self._cycle, device_id, append_logs, report_state)
                    with trio.move_on_after(self._event_interval_s):
                        await self._wake.wait()
                    self._wake = trio.Event()
        finally:
            with trio.move_on_after(5, shield=True):
                await self.aclose()

    # ---- event streams (streams.StreamSink) ----------------------------------------------

    async def _follow_streams(self) -> None:
        """One watcher per adapter that streams; restarted when its device is reconfigured."""
        watching: dict[str, tuple[DeviceAdapter, trio.CancelScope]] = {}
        async with trio.open_nursery() as nursery:
            while True:
                changed = self._config_changed
                for device_id, (adapter, scope) in list(watching.items()):
                    if self._adapters.get(device_id) is not adapter:
                        scope.cancel()
                        del watching[device_id]
                        self.streaming.discard(device_id)
                for device_id, adapter in list(self._adapters.items()):
                    if device_id not in watching and isinstance(adapter, streams.AlertSource):
                        scope = trio.CancelScope()
                        watching[device_id] = (adapter, scope)
                        nursery.start_soon(self._watch, device_id, adapter, scope)
                await changed.wait()

    async def _watch(
        self, device_id: str, adapter: streams.AlertSource, scope: trio.CancelScope
    ) -> None:
        with scope:
            await streams.watch(device_id, adapter, self)

    async def wait_ready(self, device_id: str) -> None:
        await self._reachable.setdefault(device_id, trio.Event()).wait()

    def stream_up(self, device_id: str) -> None:
        self.streaming.add(device_id)
        self._wake.set()  # backfill whatever happened while the stream was down

    def stream_down(self, device_id: str, error: DeviceError | None) -> float:
        self.streaming.discard(device_id)
        if error is not None:
            self._pause_after_login_failure(device_id, error)
        return max(0.0, self._paused_until.get(device_id, 0.0) - trio.current_time())

    async def streamed(self, device_id: str, event: AccessEvent) -> None:
        append_logs, serial = self._append_logs, self._serials.get(device_id)
        if append_logs is None or serial is None:
            self._wake.set()  # the search learns the serial number and reads in order
            return
        async with self._event_lock(device_id):
            cursor = self._load_cursor(device_id)
            last = cursor[1] if cursor is not None and cursor[0] == serial else 0
            if event.serial_no <= last:
                return  # re-sent on connect (currentEvent false), or already searched
            if event.serial_no != last + 1:
                self._wake.set()  # a gap: the search reads it in order, this one included
                return
            await append_logs(f"device:{device_id}", [to_device_event(device_id, serial, event)])
            self._save_cursor(device_id, serial, event.serial_no)

    def _event_lock(self, device_id: str) -> trio.Lock:
        return self._event_locks.setdefault(device_id, trio.Lock())

    async def _cycle(
        self, device_id: str, append_logs: AppendLogs, report_state: ReportState
    ) -> None:
        adapter = self._adapters.get(device_id)
        if adapter is None or self._paused_until.get(device_id, 0.0) > trio.current_time():
            return
        try:
            if self._info_due.get(device_id, 0.0) <= trio.current_time():
                self._info_due[device_id] = trio.current_time() + self._poll_interval_s
                if not await self._poll_info(device_id, adapter, report_state):
                    return
            await self._pull_events(device_id, adapter, append_logs)
        except DeviceError as exc:
            self._pause_after_login_failure(device_id, exc)
            log.warning("device.unavailable", device_id=device_id, error=str(exc))
        except Exception:
            # One device, or a failed append, must not stop the others; the cursor did not
            # move, so the next cycle reads the same events again.
            log.exception("device.cycle_failed", device_id=device_id)

    async def _poll_info(
        self, device_id: str, adapter: DeviceAdapter, report_state: ReportState
    ) -> bool:
        now = self._utcnow()
        try:
            info = await adapter.device_info()
        except DeviceError as exc:
            error = str(exc) + self._pause_after_login_failure(device_id, exc)
            state = DeviceState(device_id=device_id, online=False, checked_at=now, error=error)
            self._states[device_id] = state
            await report_state(state)
            return False
        self._serials[device_id] = info.serial_number
        self._reachable.setdefault(device_id, trio.Event()).set()
        self._states[device_id] = state = DeviceState(
            device_id=device_id, online=True, checked_at=now, info=msgspec.structs.asdict(info)
        )
        await report_state(state)
        return True

    def _pause_after_login_failure(self, device_id: str, exc: DeviceError) -> str:
        """Stop polling after a login failure; returns what to tell the operator."""
        if exc.kind is DeviceErrorKind.AUTH_FAILED:
            self._paused_until[device_id] = math.inf
            return "; polling paused until the device credentials are changed"
        if exc.kind is DeviceErrorKind.LOCKED:
            wait_s = exc.unlock_in_s or DEFAULT_UNLOCK_S
            self._paused_until[device_id] = trio.current_time() + wait_s
            return f"; polling paused for {wait_s} s"
        return ""

    def _load_cursor(self, device_id: str) -> tuple[str, int] | None:
        row = self._db.execute(
            "SELECT device_serial, last_serial_no FROM device_cursors WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def _save_cursor(self, device_id: str, device_serial: str, last_serial_no: int) -> None:
        self._db.execute(
            "INSERT INTO device_cursors (device_id, device_serial, last_serial_no) "
            "VALUES (?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "device_serial = excluded.device_serial, last_serial_no = excluded.last_serial_no",
            (device_id, device_serial, last_serial_no),
        )

    async def _pull_events(
        self, device_id: str, adapter: DeviceAdapter, append_logs: AppendLogs
    ) -> None:
        serial = self._serials.get(device_id)
        if serial is None:
            serial = (await adapter.device_info()).serial_number
            self._serials[device_id] = serial
        async with self._event_lock(device_id):
            cursor = self._load_cursor(device_id)
            # A different terminal behind the same device id numbers its events from 1 again.
            last = cursor[1] if cursor is not None and cursor[0] == serial else 0
            while True:
                events = await adapter.events_since(last, limit=EVENTS_PER_APPEND)
                if not events:
                    return
                logs: list[Log] = [to_device_event(device_id, serial, e) for e in events]
                await append_logs(f"device:{device_id}", logs)
                last = events[-1].serial_no
                self._save_cursor(device_id, serial, last)
                log.info("device.events_appended", device_id=device_id, count=len(logs),
                         last=last)  # fmt: skip
                if len(events) < EVENTS_PER_APPEND:
                    return


DeviceCall = Callable[[DeviceAdapter], Awaitable[dict[str, Any]]]


def _device_call(command_type: str, payload: dict[str, Any]) -> DeviceCall:
    """Check the payload before touching the device; ValueError says what is wrong."""
    if command_type in _DOOR_COMMANDS:
        door = payload.get("door", 1)
        if isinstance(door, bool) or not isinstance(door, int):
            raise ValueError('"door" must be a door number (65535 = all doors)')
        action = _DOOR_COMMANDS[command_type]
        return lambda adapter: adapter.door(door, action)
    if command_type == "reboot":
        return lambda adapter: adapter.reboot()
    if command_type == "get_info":

        async def info(adapter: DeviceAdapter) -> dict[str, Any]:
            return msgspec.structs.asdict(await adapter.device_info())

        return info
    if command_type == "get_status":
        return lambda adapter: adapter.status()
    if command_type == "sync_time":
        return lambda adapter: adapter.sync_time()
    if command_type == "add_user":
        user = msgspec.convert(payload, UserRecord)
        return lambda adapter: adapter.add_user(user)
    if command_type == "delete_user":
        employee_no = payload.get("employee_no")
        if not isinstance(employee_no, str) or not employee_no:
            raise ValueError('"employee_no" is required')
        return lambda adapter: adapter.delete_user(employee_no)
    raise AssertionError(f"{command_type} is in DEVICE_COMMAND_TYPES but not handled")


def _error_details(exc: DeviceError) -> dict[str, Any]:
    details: dict[str, Any] = {"error_kind": exc.kind.value}
    for name in ("http_status", "status_code", "sub_status_code", "error_code", "unlock_in_s"):
        value = getattr(exc, name)
        if value is not None:
            details[name] = value
    return details
