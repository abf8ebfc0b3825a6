"""Events in real time: the DeviceManager follows a simulated terminal's alert stream on a
real socket, backfills what it missed with the event search after a reconnect (no gap, no
duplicate), and falls back to polling on firmware without a stream."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import apsw
import pytest
import trio

from gateway.devices.base import AccessEvent
from gateway.devices.manager import DeviceManager
from tests.devices.sim import PASSWORD, Running, simulator
from tests.devices.test_manager import Sink, command

pytestmark = pytest.mark.trio
# Long enough that only the stream (or a reconnect's backfill) can deliver within a test.
NO_POLLING_S = 3600.0


async def until(predicate: Callable[[], bool], within_s: float = 30.0) -> None:
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 - the state lives behind a socket
            await trio.sleep(0.02)


@asynccontextmanager
async def managed(
    sim: Running, tmp_path: Path, event_interval_s: float = NO_POLLING_S
) -> AsyncIterator[tuple[DeviceManager, Sink]]:
    db = apsw.Connection(str(tmp_path / "devices.db"))
    manager = DeviceManager(db, poll_interval_s=3600, event_interval_s=event_interval_s)
    await manager.configure(sim.config())
    sink = Sink()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: manager.run(
                append_logs=sink.append_logs,
                report_state=sink.report_state,
                task_status=task_status,
            )
        )
        yield manager, sink
        nursery.cancel_scope.cancel()
    db.close()


def serials(sink: Sink) -> list[int]:
    return [log.serial_no for log in sink.logs]


async def test_streamed_events_arrive_without_polling_and_old_ones_once(tmp_path: Path) -> None:
    async with simulator() as sim:
        for number in range(3):  # from before the gateway knew the terminal
            sim.terminal.simulate_face_access(str(1000 + number))
        async with managed(sim, tmp_path) as (manager, sink):
            await until(lambda: "dev-1" in manager.streaming)
            await until(lambda: len(sink.logs) == 3)  # the backfill on connect
            for expected in range(4, 9):
                sim.terminal.simulate_face_access("1001")
                await until(lambda n=expected: serials(sink) == list(range(1, n + 1)))  # type: ignore[misc]
            last = sink.logs[-1]
            assert (last.major, last.minor, last.employee_no) == (5, 75, "1001")
    assert len({log.id for log in sink.logs}) == 8


async def test_a_reconnect_backfills_what_happened_while_the_stream_was_down(
    tmp_path: Path,
) -> None:
    async with simulator(reboot_s=0.5) as sim, managed(sim, tmp_path) as (manager, sink):
        await until(lambda: "dev-1" in manager.streaming)
        sim.terminal.simulate_face_access("1001")
        await until(lambda: serials(sink) == [1])
        rebooted = await manager.run_command(command("reboot"))
        assert rebooted.status.value == "SUCCESS", rebooted.error
        # The reboot event (2) is logged before the terminal leaves the network.
        await until(lambda: "dev-1" not in manager.streaming)
        for _ in range(3):  # while nobody is connected
            sim.terminal.simulate_face_access("1002")
        await until(lambda: "dev-1" in manager.streaming)
        sim.terminal.simulate_face_access("1003")
        await until(lambda: len(sink.logs) >= 6)
    assert serials(sink) == [1, 2, 3, 4, 5, 6]
    assert len({log.id for log in sink.logs}) == 6


async def test_a_gap_in_the_stream_is_read_in_order_by_the_search(tmp_path: Path) -> None:
    async with simulator(alert_stream=False) as sim, managed(sim, tmp_path) as (manager, sink):
        await until(lambda: bool(sink.states))  # polled once: the serial is known
        for number in range(3):
            sim.terminal.simulate_face_access(str(number))
        # Event 3 streamed, its parts for 1 and 2 lost: it must not jump the cursor.
        third = AccessEvent(serial_no=3, major=5, minor=75, time=dt.datetime.now(dt.UTC))
        await manager.streamed("dev-1", third)
        await until(lambda: len(sink.logs) >= 3)
        assert serials(sink) == [1, 2, 3]
        await manager.streamed("dev-1", third)  # re-sent on a reconnect
        sim.terminal.simulate_face_access("next")
        fourth = AccessEvent(serial_no=4, major=5, minor=75, time=dt.datetime.now(dt.UTC))
        await manager.streamed("dev-1", fourth)
    assert serials(sink) == [1, 2, 3, 4]


async def test_firmware_without_a_stream_is_polled(tmp_path: Path) -> None:
    async with (
        simulator(alert_stream=False) as sim,
        managed(sim, tmp_path, event_interval_s=0.2) as (manager, sink),
    ):
        sim.terminal.simulate_face_access("1001")
        await until(lambda: serials(sink) == [1])
        sim.terminal.simulate_face_access("1002")
        await until(lambda: serials(sink) == [1, 2])
        assert "dev-1" not in manager.streaming


async def test_no_stream_login_before_the_credentials_worked(tmp_path: Path) -> None:
    """With a wrong password the stream must not add a second bad login (lock-out at 2)."""
    async with simulator(lockout_after=2) as sim:
        db = apsw.Connection(str(tmp_path / "devices.db"))
        manager = DeviceManager(db, poll_interval_s=3600, event_interval_s=NO_POLLING_S)
        await manager.configure(sim.config(password="wrong"))
        sink = Sink()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: manager.run(
                    append_logs=sink.append_logs,
                    report_state=sink.report_state,
                    task_status=task_status,
                )
            )
            await until(lambda: bool(sink.states))
            right = sim.adapter(PASSWORD)
            assert (await right.device_info()).serial_number  # not locked out
            await right.aclose()
            await manager.configure(sim.config())
            await until(lambda: "dev-1" in manager.streaming)
            nursery.cancel_scope.cancel()
        db.close()
