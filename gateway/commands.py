"""Commands from the backend: run at most once per id, always answered with a terminal status.

Before a command runs, its id is written to state.db; its result is written after. A
redelivered id (the backend resends every SENT command on reconnect) is answered from that
record without running again; a record with no result means the gateway stopped mid-run, and
the answer is FAILED rather than a second run (a door must not open twice).

Commands run in the control channel's long-lived nursery, not in one connection's, so a
reconnect does not cut a flush short; results wait in the outbox for the next connection.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import structlog
import trio
from opentelemetry.trace import SpanKind

from gateway import discovery, sadp, tracing
from gateway.buffer import Buffer
from gateway.errors import StorageError
from gateway.state import State
from gateway.uplink import Uplink
from protocol.control import (
    GATEWAY_COMMAND_TYPES,
    Command,
    CommandResult,
    CommandStatus,
    DeviceConfig,
)

log = structlog.get_logger("gateway.commands")

# A flush waits at most this long (or until the command expires) for the queue to drain.
FLUSH_WAIT_S = 30.0


class DeviceHub(Protocol):
    """What the control channel needs from the device side (gateway/devices/manager.py's
    DeviceManager provides it)."""

    async def configure(self, cfg: DeviceConfig) -> None:
        """Add, change, disable or delete (cfg.deleted) a device."""

    async def run_command(self, cmd: Command) -> CommandResult:
        """Run a command with target="device"; always a terminal result, never raises."""


Reply = Callable[[CommandResult], Awaitable[None]]


def _finished(command: Command, status: CommandStatus, **fields: Any) -> CommandResult:
    return CommandResult(command_id=command.id, status=status, **fields)


class CommandRunner:
    def __init__(
        self,
        state: State,
        buffer: Buffer,
        uplink: Uplink,
        devices: DeviceHub | None,
        *,
        version: str,
        reack_policies: Callable[[], Awaitable[dict[str, int]]],
        restart: Callable[[], None],
    ) -> None:
        self._state = state
        self._buffer = buffer
        self._uplink = uplink
        self._devices = devices
        self._version = version
        self._reack_policies = reack_policies
        self._restart = restart
        self._running: dict[uuid.UUID, trio.CancelScope] = {}
        self._cancel_requested: set[uuid.UUID] = set()

    async def run(self, command: Command, reply: Reply) -> None:
        """Run `command` (or answer it from the record) and hand the result to `reply`."""
        # The backend's delivery span is the parent; a command without one starts a trace.
        with tracing.span(
            "command.run",
            context=tracing.continued(command.traceparent) or tracing.NEW_TRACE,
            kind=SpanKind.CONSUMER,
            attributes={
                "td.command.id": str(command.id),
                "td.command.type": command.command_type,
                "td.command.target": command.target,
            },
        ):
            await self._run(command, reply)

    async def _run(self, command: Command, reply: Reply) -> None:
        if command.id in self._running:
            return  # redelivered while running: the running one answers
        # Claimed before the first await: a redelivery (reconnect and NOTIFY both deliver)
        # arriving while the record is being written must not read it as an interrupted run.
        scope = trio.CancelScope()
        self._running[command.id] = scope
        try:
            result = await self._run_claimed(command, scope, reply)
        finally:
            del self._running[command.id]
            self._cancel_requested.discard(command.id)
        if result is None:
            return
        await self._state.finish_command(result)
        log.info(
            "command_finished",
            command_id=str(command.id),
            command_type=command.command_type,
            target=command.target,
            status=result.status.value,
        )
        result.traceparent = tracing.traceparent()
        await reply(result)
        if (
            command.target == "gateway"
            and command.command_type == "restart"
            and result.status == CommandStatus.SUCCESS
        ):
            self._restart()

    async def _run_claimed(
        self, command: Command, scope: trio.CancelScope, reply: Reply
    ) -> CommandResult | None:
        """The result to record and send; None when `reply` already has the answer."""
        try:
            known = await self._state.begin_command(command.id)
        except StorageError as exc:
            # Without a record there is no at-most-once: refuse rather than risk a rerun.
            await reply(_finished(command, CommandStatus.FAILED, error=f"not run: {exc}"))
            return None
        if known is not None:
            await reply(known)
            return None
        remaining = (command.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        if remaining <= 0:
            return _finished(
                command, CommandStatus.TIMED_OUT, error="the command expired before it arrived"
            )
        scope.deadline = trio.current_time() + remaining
        try:
            result = None
            with scope:
                result = await self._execute(command)
            if result is None:  # the scope caught its own cancellation
                if command.id in self._cancel_requested:
                    return _finished(command, CommandStatus.CANCELED, error="cancelled")
                return _finished(command, CommandStatus.TIMED_OUT, error="the command expired")
            return result
        except Exception as exc:  # every command must reach a terminal state, bug or not
            log.exception("command_crashed", command_type=command.command_type)
            return _finished(
                command,
                CommandStatus.FAILED,
                error=f"the gateway failed to run it ({type(exc).__name__})",
            )

    async def cancel(self, command_id: uuid.UUID, reply: Reply) -> None:
        scope = self._running.get(command_id)
        if scope is not None:
            self._cancel_requested.add(command_id)
            scope.cancel()
            return
        if await self._state.begin_command(command_id) is None:
            # Not seen yet: record it cancelled so a later delivery is answered, not run.
            result = CommandResult(
                command_id=command_id, status=CommandStatus.CANCELED, error="cancelled"
            )
            await self._state.finish_command(result)
            await reply(result)

    async def _execute(self, command: Command) -> CommandResult:
        if command.target == "device":
            if self._devices is None:
                return _finished(
                    command, CommandStatus.FAILED, error="this gateway runs no devices"
                )
            with tracing.span(
                "device.command",
                kind=SpanKind.CLIENT,
                attributes={"td.device.id": command.device_id or ""},
            ) as span:
                result = await self._devices.run_command(command)
                span.set_attribute("td.command.status", result.status.value)
                return result
        match command.command_type:
            case "ping":
                return _finished(command, CommandStatus.SUCCESS, result=self._ping())
            case "flush":
                return await self._flush(command)
            case "sync_policy":
                revisions = await self._reack_policies()
                return _finished(
                    command, CommandStatus.SUCCESS, result={"policy_revisions": revisions}
                )
            case "discover":
                return await _discover(command)
            case "restart":
                return _finished(
                    command,
                    CommandStatus.SUCCESS,
                    result={"restarting": True, "detail": "buffered logs are kept"},
                )
            case other:
                known = ", ".join(GATEWAY_COMMAND_TYPES)
                return _finished(
                    command,
                    CommandStatus.FAILED,
                    error=f"unknown gateway command {other!r}; known: {known}",
                )

    def _ping(self) -> dict[str, Any]:
        stats = self._buffer.stats
        return {
            "pong": True,
            "gateway_time": dt.datetime.now(dt.UTC).isoformat(),
            "version": self._version,
            "queue_depth": stats.queue_depth if stats else 0,
        }

    async def _flush(self, command: Command) -> CommandResult:
        """Upload now; succeeds once what was queued when it arrived has been uploaded."""
        stats = self._buffer.stats
        before = stats.queue_depth if stats else 0
        uploaded_at_start = self._uplink.uploaded_total
        if not self._uplink.enabled:
            return _finished(command, CommandStatus.FAILED, error="uploads are not configured")

        def done() -> bool:
            now = self._buffer.stats
            return (now is None or now.queue_depth == 0) or (
                self._uplink.uploaded_total - uploaded_at_start >= before
            )

        with trio.move_on_after(FLUSH_WAIT_S):
            while not done():
                self._uplink.wake()
                await self._buffer.change_event().wait()
        after = self._buffer.stats
        figures = {
            "queue_depth_before": before,
            "queue_depth_after": after.queue_depth if after else 0,
            "uploaded": self._uplink.uploaded_total - uploaded_at_start,
        }
        if not done():
            return _finished(
                command,
                CommandStatus.FAILED,
                result=figures,
                error=f"uploads did not finish within {FLUSH_WAIT_S:g} s",
            )
        return _finished(command, CommandStatus.SUCCESS, result=figures)


async def _discover(command: Command) -> CommandResult:
    """Probe payload {"hosts"?, "ports"?, "sadp"?} for terminals (see gateway/discovery.py)."""
    hosts, ports = command.payload.get("hosts", "127.0.0.1"), command.payload.get("ports", "")
    use_sadp = command.payload.get("sadp", False)
    if not isinstance(hosts, str) or not isinstance(ports, str) or not isinstance(use_sadp, bool):
        return _finished(
            command,
            CommandStatus.FAILED,
            error='payload: "ports" (e.g. "80,8000-8100") and "hosts" are text, '
            '"sadp" is a boolean',
        )
    try:
        targets = discovery.parse_targets(hosts, ports) if ports or not use_sadp else []
    except ValueError as exc:
        return _finished(command, CommandStatus.FAILED, error=f"payload: {exc}")
    try:
        found = await discovery.discover(targets, sadp_port=sadp.SADP_PORT if use_sadp else None)
    except OSError as exc:
        return _finished(command, CommandStatus.FAILED, error=f"SADP on loopback failed: {exc}")
    return _finished(
        command,
        CommandStatus.SUCCESS,
        result={"found": [msgspec.structs.asdict(f) for f in found], "probed": len(targets)},
    )
