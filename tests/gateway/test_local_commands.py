"""Local commands in state.db: recorded before they run, so a stop mid-run is answered and
reported FAILED, never run again; reported upstream until acknowledged."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
import trio

from gateway.state import State
from protocol.control import Command, CommandResult, CommandStatus


def open_door(device_id: str = "dev-1") -> Command:
    return Command(
        id=uuid.uuid4(),
        target="device",
        command_type="open_door",
        payload={"door": 1},
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60),
        device_id=device_id,
    )


async def with_state(tmp_path: Path, body: object) -> None:
    state = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(state.run)
        await body(state)  # type: ignore[operator]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_local_command_cut_short_by_a_stop_is_failed_not_rerun(tmp_path: Path) -> None:
    interrupted, finished = open_door(), open_door()

    async def first_run(state: State) -> None:
        await state.begin_local_command(interrupted)
        await state.begin_local_command(finished)
        await state.finish_command(
            CommandResult(command_id=finished.id, status=CommandStatus.SUCCESS, result={"ok": 1})
        )
        # Only finished commands are reported; the running one waits for its result.
        assert [r.command.id for r in await state.local_commands(unreported=True)] == [finished.id]

    async def after_restart(state: State) -> None:
        again = await state.begin_command(interrupted.id)
        assert again is not None and again.status is CommandStatus.FAILED
        unreported = await state.local_commands(unreported=True)
        assert {r.command.id for r in unreported} == {interrupted.id, finished.id}
        cut = next(r for r in unreported if r.command.id == interrupted.id)
        assert cut.result is not None and cut.result.status is CommandStatus.FAILED
        assert cut.result.error is not None and "stopped" in cut.result.error
        await state.mark_local_reported([interrupted.id, finished.id])
        assert await state.local_commands(unreported=True) == []
        listed = await state.local_commands(device_id="dev-1")
        assert [r.command.id for r in listed] == [finished.id, interrupted.id]

    await with_state(tmp_path, first_run)
    await with_state(tmp_path, after_restart)
