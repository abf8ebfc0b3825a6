"""The gateway-side DeviceManager: commands, health polling, events to logs exactly once."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
import trio
import trio.testing

from gateway.devices.manager import DEVICE_EVENT_NAMESPACE, DeviceManager
from protocol.agent import DeviceEvent, Log
from protocol.control import Command, CommandResult, CommandStatus, DeviceState
from tests.devices.sim import PASSWORD, Running, simulator


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.sqlite"


@pytest.fixture
def db(db_path: Path) -> Iterator[apsw.Connection]:
    connection = apsw.Connection(str(db_path))
    yield connection
    connection.close()


def command(
    command_type: str,
    payload: dict[str, Any] | None = None,
    *,
    device_id: str = "dev-1",
    expires_in_s: float = 60,
) -> Command:
    return Command(
        id=uuid.uuid4(),
        target="device",
        command_type=command_type,
        payload=payload or {},
        device_id=device_id,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in_s),
    )


class Sink:
    """What the gateway passes to `run`: a durable log append and a state reporter."""

    def __init__(self) -> None:
        self.logs: list[DeviceEvent] = []
        self.sources: set[str] = set()
        self.states: list[DeviceState] = []
        self.fail_next_appends = 0
        self.failed_appends = 0

    async def append_logs(self, source: str, logs: list[Log]) -> None:
        if self.fail_next_appends:
            self.fail_next_appends -= 1
            self.failed_appends += 1
            raise OSError("disk full")
        self.sources.add(source)
        self.logs += [log for log in logs if isinstance(log, DeviceEvent)]

    async def report_state(self, state: DeviceState) -> None:
        self.states.append(state)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll with a deadline: the manager's progress has no event to wait on."""
    with trio.fail_after(600):
        while True:
            if predicate():
                return
            await trio.sleep(1)


async def manager_for(sim: Running, db: apsw.Connection, password: str = PASSWORD) -> DeviceManager:
    manager = DeviceManager(db, poll_interval_s=60, event_interval_s=10)
    await manager.configure(sim.config(password))
    return manager


@pytest.mark.trio
async def test_every_command_type(db: apsw.Connection, clock: trio.testing.MockClock) -> None:
    async with simulator(doors=2, reboot_s=20) as sim:
        manager = await manager_for(sim, db)

        async def ok(command_type: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
            result = await manager.run_command(command(command_type, payload))
            assert result.status is CommandStatus.SUCCESS, result.error
            assert result.result is not None
            return result.result

        assert (await ok("get_info"))["serial_number"] == sim.terminal.config.serial
        assert (await ok("open_door", {"door": 1}))["action"] == "open"
        assert (await ok("get_status"))["doors"][0]["lock"] == "open"
        await ok("close_door", {"door": 1})
        await ok("always_open", {"door": 2})
        await ok("always_close", {"door": 65535})
        assert (await ok("sync_time"))["time_zone"] == "CST-8:00:00"
        await ok("add_user", {"employee_no": "1001", "name": "Li Wei", "doors": [1]})
        assert "1001" in sim.terminal.users
        await ok("delete_user", {"employee_no": "1001"})
        assert "1001" not in sim.terminal.users
        assert await ok("reboot") == {"rebooting": True}
        rebooting = await manager.run_command(command("get_info"))
        assert rebooting.status is CommandStatus.FAILED
        assert rebooting.error is not None and "rebooting" in rebooting.error
        await manager.aclose()


@pytest.mark.trio
async def test_command_failures_say_why(db: apsw.Connection, clock: trio.testing.MockClock) -> None:
    async with simulator(busy_rate=0.0) as sim:
        manager = await manager_for(sim, db)
        unknown = await manager.run_command(command("launch_rocket"))
        assert unknown.status is CommandStatus.FAILED
        assert unknown.error is not None and "open_door" in unknown.error

        expired = await manager.run_command(command("open_door", expires_in_s=-1))
        assert expired.status is CommandStatus.TIMED_OUT
        assert sim.terminal.events == []

        nowhere = await manager.run_command(command("get_info", device_id="dev-404"))
        assert nowhere.status is CommandStatus.FAILED
        assert nowhere.error is not None and "dev-404" in nowhere.error

        bad_payload = await manager.run_command(command("open_door", {"door": "front"}))
        assert bad_payload.status is CommandStatus.FAILED
        assert bad_payload.error is not None and "door" in bad_payload.error

        sim.terminal.busy_rate = 1.0
        busy = await manager.run_command(command("open_door"))
        assert busy.status is CommandStatus.FAILED
        assert busy.result == {
            "error_kind": "busy",
            "http_status": 503,
            "status_code": 2,
            "sub_status_code": "deviceBusy",
        }

        await manager.configure(msgspec.structs.replace(sim.config(), vendor="acme"))
        no_vendor = await manager.run_command(command("get_info"))
        assert no_vendor.error is not None and "unknown device vendor 'acme'" in no_vendor.error

        await manager.configure(msgspec.structs.replace(sim.config(), enabled=False))
        disabled = await manager.run_command(command("get_info"))
        assert disabled.error is not None and "disabled" in disabled.error
        await manager.aclose()


@pytest.mark.trio
async def test_a_command_that_arrives_before_its_device_config_waits_for_it(
    db: apsw.Connection,
) -> None:
    async with simulator() as sim:
        manager = DeviceManager(db, poll_interval_s=60, event_interval_s=10)
        results: list[CommandResult] = []

        async def deliver() -> None:
            results.append(await manager.run_command(command("open_door", {"door": 1})))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            await trio.testing.wait_all_tasks_blocked()
            await manager.configure(sim.config())
        assert results[0].status is CommandStatus.SUCCESS, results[0].error
        await manager.aclose()


@pytest.mark.trio
async def test_wrong_password_fails_the_command_without_leaking_it(db: apsw.Connection) -> None:
    async with simulator() as sim:
        manager = await manager_for(sim, db, password="Not-The-Password-9")
        result = await manager.run_command(command("open_door", {"door": 1}))
        assert result.status is CommandStatus.FAILED
        assert result.error is not None and "authentication failed" in result.error
        assert "Not-The-Password-9" not in msgspec.json.encode(result).decode()
        assert "Not-The-Password-9" not in repr(manager)
        assert sim.terminal.events == []
        await manager.aclose()


@pytest.mark.trio
async def test_slow_device_times_the_command_out(
    db: apsw.Connection, clock: trio.testing.MockClock
) -> None:
    async with simulator(latency_ms=8_000) as sim:
        manager = await manager_for(sim, db)
        result = await manager.run_command(command("get_info", expires_in_s=3))
        assert result.status is CommandStatus.TIMED_OUT
        await manager.aclose()


@pytest.mark.trio
async def test_a_redelivered_command_runs_once(db: apsw.Connection) -> None:
    async with simulator() as sim:
        manager = await manager_for(sim, db)
        cmd = command("open_door", {"door": 1})
        first = await manager.run_command(cmd)
        again = await manager.run_command(cmd)
        assert first == again
        assert len(sim.terminal.events) == 2  # remote open + lock opened, once
        await manager.aclose()


@pytest.mark.trio
async def test_a_command_redelivered_while_running_runs_once(
    db: apsw.Connection, clock: trio.testing.MockClock
) -> None:
    async with simulator(latency_ms=2_000) as sim:
        manager = await manager_for(sim, db)
        cmd = command("open_door", {"door": 1})
        results: list[CommandResult] = []

        async def deliver() -> None:
            results.append(await manager.run_command(cmd))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            nursery.start_soon(deliver)
        assert [r.status for r in results] == [CommandStatus.SUCCESS] * 2
        assert len(sim.terminal.events) == 2
        await manager.aclose()


def expected_id(sim: Running, serial_no: int) -> uuid.UUID:
    return uuid.uuid5(DEVICE_EVENT_NAMESPACE, f"{sim.terminal.config.serial}:{serial_no}")


@pytest.mark.trio
async def test_events_become_logs_with_deterministic_ids(
    db: apsw.Connection, clock: trio.testing.MockClock
) -> None:
    sink = Sink()
    async with simulator(event_page_size=30) as sim:
        for number in range(70):
            sim.terminal.simulate_face_access(str(number))
        manager = await manager_for(sim, db)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: manager.run(
                    append_logs=sink.append_logs,
                    report_state=sink.report_state,
                    task_status=task_status,
                )
            )
            await wait_until(lambda: len(sink.logs) == 70)
            assert sink.states and sink.states[0].online
            assert sink.states[0].info is not None
            assert sink.states[0].info["serial_number"] == sim.terminal.config.serial
            # A door command's events are picked up without waiting for the next cycle.
            await manager.run_command(command("open_door", {"door": 1}))
            await wait_until(lambda: len(sink.logs) == 72)
            nursery.cancel_scope.cancel()
    assert sink.sources == {"device:dev-1"}
    assert [log.serial_no for log in sink.logs] == list(range(1, 73))
    assert [log.id for log in sink.logs] == [expected_id(sim, n) for n in range(1, 73)]
    face = sink.logs[0]
    assert (face.major, face.minor, face.employee_no, face.door) == (5, 75, "0", 1)
    assert face.device_id == "dev-1"
    assert [(log.major, log.minor) for log in sink.logs[70:]] == [(3, 1024), (5, 21)]


async def run_until(manager: DeviceManager, sink: Sink, predicate: Callable[[], bool]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: manager.run(
                append_logs=sink.append_logs,
                report_state=sink.report_state,
                task_status=task_status,
            )
        )
        await wait_until(predicate)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_restart_does_not_append_committed_events_again(
    db_path: Path, clock: trio.testing.MockClock
) -> None:
    sink = Sink()
    async with simulator() as sim:
        for number in range(5):
            sim.terminal.simulate_face_access(str(number))
        first_db = apsw.Connection(str(db_path))
        first = await manager_for(sim, first_db)
        await run_until(first, sink, lambda: len(sink.logs) == 5)
        first_db.close()

        for number in range(5, 8):
            sim.terminal.simulate_face_access(str(number))
        # A new process: the device config and the cursor come from the SQLite file.
        second_db = apsw.Connection(str(db_path))
        second = DeviceManager(second_db, poll_interval_s=60, event_interval_s=10)
        assert second.device_ids == ["dev-1"]
        await run_until(second, sink, lambda: len(sink.logs) >= 8)
        second_db.close()
    assert [log.serial_no for log in sink.logs] == list(range(1, 9))
    assert len({log.id for log in sink.logs}) == 8


@pytest.mark.trio
async def test_events_are_not_skipped_when_an_append_fails(
    db: apsw.Connection, clock: trio.testing.MockClock
) -> None:
    sink = Sink()
    sink.fail_next_appends = 2
    async with simulator() as sim:
        for number in range(3):
            sim.terminal.simulate_face_access(str(number))
        manager = await manager_for(sim, db)

        def after_failures_more_events() -> bool:
            if sink.failed_appends == 2 and len(sim.terminal.events) == 3:
                sim.terminal.simulate_face_access("late")  # arrives while appends failed
            return len(sink.logs) == 4

        await run_until(manager, sink, after_failures_more_events)
    assert sink.failed_appends == 2
    assert [log.serial_no for log in sink.logs] == [1, 2, 3, 4]


@pytest.mark.trio
async def test_bad_credentials_stop_polling_before_the_device_locks_us_out(
    db: apsw.Connection, clock: trio.testing.MockClock
) -> None:
    sink = Sink()
    async with simulator(lockout_after=2) as sim:
        manager = DeviceManager(db, poll_interval_s=60, event_interval_s=10)
        await manager.configure(sim.config(password="wrong"))
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: manager.run(
                    append_logs=sink.append_logs,
                    report_state=sink.report_state,
                    task_status=task_status,
                )
            )
            await wait_until(lambda: bool(sink.states))
            # The backend re-sends configs on every reconnect: that must not log in again.
            await manager.configure(sim.config(password="wrong"))
            await trio.sleep(600)  # ten poll intervals
            state = sink.states[0]
            assert state.online is False
            assert state.error is not None
            assert "authentication failed" in state.error
            assert "polling paused" in state.error
            # Had it kept polling, the second bad login would have locked this address.
            right = sim.adapter()
            assert (await right.device_info()).serial_number
            await right.aclose()

            await manager.configure(sim.config())  # the operator fixes the password
            await wait_until(lambda: sink.states[-1].online)
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_deleting_a_device_forgets_its_password(
    db: apsw.Connection, clock: trio.testing.MockClock
) -> None:
    async with simulator() as sim:
        manager = await manager_for(sim, db)
        stored = db.execute("SELECT config FROM device_configs").fetchall()
        assert len(stored) == 1
        await manager.configure(msgspec.structs.replace(sim.config(), deleted=True))
        assert db.execute("SELECT count(*) FROM device_configs").fetchone() == (0,)
        result: CommandResult = await manager.run_command(command("get_info"))
        assert result.status is CommandStatus.FAILED
        await manager.aclose()
