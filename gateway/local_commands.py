"""Device commands an operator runs on site, through the local API, with or without the cloud.

The gateway gives each one a fresh id and records it in state.db (the `commands` row the
control channel's commands use, plus a `local_commands` row) before the device is touched,
and its result after: at most once holds exactly as for the backend's commands, and a command
cut short by a stop is answered FAILED, never run again. Finished commands go upstream as
`local_command` messages until the backend acknowledges them, so they appear once in
`GET /v2/devices/{id}/commands`, marked local, whenever the backend is reachable again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
import trio

from gateway.errors import StorageError
from gateway.state import LocalRecord, State
from protocol.control import Command, CommandResult, DeviceConfig, GatewayMessage, LocalCommandRun

log = structlog.get_logger("gateway.local_commands")

REPORTS_PER_CONNECT = 500
_RUNNING_LIMIT = 64
_RECENT = 1000


class Devices(Protocol):
    def config(self, device_id: str) -> DeviceConfig | None: ...

    async def run_command(self, cmd: Command) -> CommandResult: ...


class TooBusy(Exception):
    """More local commands are running than the gateway takes at once."""


def report(record: LocalRecord) -> LocalCommandRun:
    assert record.result is not None
    return LocalCommandRun(
        id=record.command.id,
        device_id=record.command.device_id or "",
        command_type=record.command.command_type,
        payload=record.command.payload,
        status=record.result.status,
        result=record.result.result,
        error=record.result.error,
        created_at=record.created_at,
        finished_at=record.finished_at or record.created_at,
    )


class LocalCommands:
    """Start with `await nursery.start(local.run)`; commands outlive the request that asked."""

    def __init__(
        self,
        state: State,
        devices: Devices,
        send_upstream: Callable[[GatewayMessage], Awaitable[None]],
        connected: Callable[[], bool],
    ) -> None:
        self._state = state
        self._devices = devices
        self._send_upstream = send_upstream
        self._connected = connected
        self._finished: dict[uuid.UUID, trio.Event] = {}
        # The latest records, so answering a caller costs no state.db read.
        self._recent: OrderedDict[uuid.UUID, LocalRecord] = OrderedDict()
        # Reports sent since the last welcome and not acknowledged yet; when a full batch is
        # acknowledged, the next one follows.
        self._awaiting_ack: set[uuid.UUID] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def knows_device(self, device_id: str) -> bool:
        return self._devices.config(device_id) is not None

    async def submit(
        self, device_id: str, command_type: str, payload: dict[str, Any], expires_in_s: float
    ) -> uuid.UUID:
        """Record the command and start it; returns its id at once."""
        if len(self._finished) >= _RUNNING_LIMIT:
            raise TooBusy(f"{_RUNNING_LIMIT} local commands are already running; try again")
        assert self._nursery is not None, "LocalCommands.run is not running"
        command = Command(
            id=uuid.uuid4(),
            target="device",
            command_type=command_type,
            payload=payload,
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in_s),
            device_id=device_id,
        )
        await self._state.begin_local_command(command)
        self._remember(LocalRecord(command, dt.datetime.now(dt.UTC), None, None))
        self._finished[command.id] = done = trio.Event()
        self._nursery.start_soon(self._execute, command, done)
        log.info("local_command_started", command_id=str(command.id), device_id=device_id,
                 command_type=command_type)  # fmt: skip
        return command.id

    async def _execute(self, command: Command, done: trio.Event) -> None:
        try:
            result = await self._devices.run_command(command)
            try:
                await self._state.finish_command(result)
            except StorageError as exc:
                # The caller still gets the outcome; the record says "interrupted" after a
                # restart, which is the truth state.db can tell.
                log.error("local_command_unrecorded", command_id=str(command.id), error=str(exc))
            started = self._recent.get(command.id)
            record = LocalRecord(
                command,
                started.created_at if started else dt.datetime.now(dt.UTC),
                result,
                dt.datetime.now(dt.UTC),
            )
            self._remember(record)
        finally:
            del self._finished[command.id]
            done.set()
        log.info("local_command_finished", command_id=str(command.id),
                 status=result.status.value)  # fmt: skip
        if self._connected():
            # While disconnected it waits in state.db and leaves after the next welcome.
            await self._send_upstream(report(record))

    def _remember(self, record: LocalRecord) -> None:
        self._recent[record.command.id] = record
        self._recent.move_to_end(record.command.id)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    async def get(self, command_id: uuid.UUID, wait_s: float = 0.0) -> LocalRecord | None:
        done = self._finished.get(command_id)
        if done is not None and wait_s > 0:
            with trio.move_on_after(wait_s):
                await done.wait()
        recent = self._recent.get(command_id)
        if recent is not None:
            return recent
        found = await self._state.local_commands(command_id=command_id, limit=1)
        return found[0] if found else None

    async def listing(self, device_id: str, limit: int) -> list[LocalRecord]:
        return await self._state.local_commands(device_id=device_id, limit=limit)

    # ---- the control channel's side --------------------------------------------------------

    async def unreported(self) -> list[LocalCommandRun]:
        """What the backend has not acknowledged yet, oldest first, one batch (sent after
        every welcome, and again whenever a full batch has been acknowledged)."""
        records = await self._state.local_commands(unreported=True, limit=REPORTS_PER_CONNECT)
        reports = [report(record) for record in records]
        self._awaiting_ack = (
            {r.id for r in reports} if len(reports) == REPORTS_PER_CONNECT else set()
        )
        return reports

    async def acknowledged(self, ids: list[uuid.UUID]) -> None:
        await self._state.mark_local_reported(ids)
        if self._awaiting_ack:
            self._awaiting_ack.difference_update(ids)
            if not self._awaiting_ack and self._connected():
                for message in await self.unreported():
                    await self._send_upstream(message)
