from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from gateway.app import Gateway
from gateway.commands import CommandRunner
from gateway.state import State
from protocol.control import Command, CommandResult, CommandStatus, DeviceConfig
from tests.gateway.helpers import make_config, wait_until


class CountingDevices:
    """Stands in for the device manager at the DeviceHub seam; counts real runs."""

    def __init__(self, block: bool = False) -> None:
        self.runs: list[uuid.UUID] = []
        self.block = block

    async def configure(self, cfg: DeviceConfig) -> None:
        pass

    async def run_command(self, cmd: Command) -> CommandResult:
        self.runs.append(cmd.id)
        if self.block:
            await trio.sleep_forever()
        return CommandResult(command_id=cmd.id, status=CommandStatus.SUCCESS, result={"ok": 1})


def device_command(expires_in_s: float = 60) -> Command:
    return Command(
        id=uuid.uuid4(),
        target="device",
        command_type="open_door",
        device_id="d1",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in_s),
    )


@asynccontextmanager
async def runner(tmp_path: Path, devices: CountingDevices) -> AsyncIterator[CommandRunner]:
    gateway = Gateway(make_config(tmp_path))
    state = State(tmp_path)
    restarts: list[int] = []

    async def no_policies() -> dict[str, int]:
        return {}

    async with trio.open_nursery() as nursery:
        await nursery.start(state.run)
        await nursery.start(gateway.buffer.run)
        yield CommandRunner(
            state,
            gateway.buffer,
            gateway.uplink,
            devices,
            version="test",
            reack_policies=no_policies,
            restart=lambda: restarts.append(1),
        )
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_redelivered_command_is_answered_from_the_record_not_run_again(
    tmp_path: Path,
) -> None:
    devices = CountingDevices()
    cmd = device_command()
    answers: list[CommandResult] = []

    async def reply(result: CommandResult) -> None:
        answers.append(result)

    async with runner(tmp_path, devices) as commands:
        await commands.run(cmd, reply)
        await commands.run(cmd, reply)
    async with runner(tmp_path, devices) as commands:  # and after a restart
        await commands.run(cmd, reply)
    assert devices.runs == [cmd.id]
    assert [a.status for a in answers] == [CommandStatus.SUCCESS] * 3
    assert answers[0] == answers[1] == answers[2]


@pytest.mark.trio
async def test_a_command_interrupted_by_a_crash_is_failed_not_rerun(tmp_path: Path) -> None:
    cmd = device_command()
    async with runner(tmp_path, CountingDevices()) as commands:
        assert await commands._state.begin_command(cmd.id) is None  # started, then "crash"
    devices = CountingDevices()
    answers: list[CommandResult] = []

    async def reply(result: CommandResult) -> None:
        answers.append(result)

    async with runner(tmp_path, devices) as commands:
        await commands.run(cmd, reply)
    assert devices.runs == []
    assert answers[0].status == CommandStatus.FAILED
    assert "not run again" in (answers[0].error or "")


@pytest.mark.trio
async def test_cancel_while_running_and_before_arrival(tmp_path: Path) -> None:
    devices = CountingDevices(block=True)
    running, early = device_command(), device_command()
    answers: dict[uuid.UUID, CommandResult] = {}

    async def reply(result: CommandResult) -> None:
        answers[result.command_id] = result

    async with runner(tmp_path, devices) as commands, trio.open_nursery() as nursery:
        nursery.start_soon(commands.run, running, reply)
        await wait_until(lambda: bool(devices.runs))
        await commands.cancel(running.id, reply)
        await commands.cancel(early.id, reply)
        await commands.run(early, reply)
        await wait_until(lambda: running.id in answers)
    assert answers[running.id].status == CommandStatus.CANCELED
    assert answers[early.id].status == CommandStatus.CANCELED
    assert devices.runs == [running.id]


@pytest.mark.trio
async def test_expired_and_unknown_commands_end_in_a_terminal_state(tmp_path: Path) -> None:
    devices = CountingDevices()
    expired = device_command(expires_in_s=-1)
    unknown = Command(
        id=uuid.uuid4(),
        target="gateway",
        command_type="format_disk",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60),
    )
    answers: dict[uuid.UUID, CommandResult] = {}

    async def reply(result: CommandResult) -> None:
        answers[result.command_id] = result

    async with runner(tmp_path, devices) as commands:
        await commands.run(expired, reply)
        await commands.run(unknown, reply)
    assert answers[expired.id].status == CommandStatus.TIMED_OUT
    assert answers[unknown.id].status == CommandStatus.FAILED
    assert "format_disk" in (answers[unknown.id].error or "")
    assert devices.runs == []


@pytest.mark.trio
async def test_a_command_delivered_twice_at_once_runs_once_and_answers_success(
    tmp_path: Path,
) -> None:
    # The backend delivers pending commands on connect and again on NOTIFY: the second copy
    # can arrive while the first is still writing its record.
    devices = CountingDevices()
    cmd = device_command()
    answers: list[CommandResult] = []

    async def reply(result: CommandResult) -> None:
        answers.append(result)

    async with runner(tmp_path, devices) as commands, trio.open_nursery() as nursery:
        nursery.start_soon(commands.run, cmd, reply)
        nursery.start_soon(commands.run, cmd, reply)
    assert devices.runs == [cmd.id]
    assert [answer.status for answer in answers] == [CommandStatus.SUCCESS]
