"""The Hikvision adapter against the simulated terminal on a real socket."""

from __future__ import annotations

import datetime as dt
import socket

import httpx
import msgspec
import pytest
import trio
import trio.testing

from devsim.hikvision.bodies import HIKVISION_NS, ISAPI_NS, STD_CGI_NS
from devsim.hikvision.terminal import SimulatedTerminal
from gateway.devices.base import DeviceError, DeviceErrorKind, UserRecord, create_adapter
from gateway.devices.hikvision import HikvisionAdapter
from tests.devices.sim import PASSWORD, simulator


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Jumps only after real idleness, so loopback I/O in flight is never overtaken.
    return trio.testing.MockClock(autojump_threshold=0.05)


def kinds(terminal: SimulatedTerminal) -> list[tuple[int, int, int | None]]:
    return [(e["major"], e["minor"], e.get("doorNo")) for e in terminal.events]


@pytest.mark.trio
async def test_device_info_status_and_namespaces() -> None:
    async with simulator(doors=2) as sim:
        adapter = sim.adapter()
        info = await adapter.device_info()
        assert info.serial_number == sim.terminal.config.serial
        assert info.door_count == 2
        status = await adapter.status()
        assert status["system"]["total_reboot_count"] == 0
        assert [d["status"] for d in status["doors"]] == ["normal", "normal"]
        time = await adapter.get_time()
        assert time["utc_offset_s"] == 8 * 3600
        await adapter.aclose()
    # One device, three namespaces: the answers above came from all of them.
    assert len({HIKVISION_NS, ISAPI_NS, STD_CGI_NS}) == 3


@pytest.mark.trio
async def test_door_commands_change_state_and_log_events() -> None:
    async with simulator(doors=2) as sim:
        adapter = sim.adapter()
        assert await adapter.door(1, "open") == {"door": 1, "action": "open"}
        assert (await adapter.status())["doors"][0]["lock"] == "open"
        await adapter.door(1, "close")
        await adapter.door(2, "always_open")
        await adapter.door(65535, "always_close")
        doors = (await adapter.status())["doors"]
        assert [d["status"] for d in doors] == ["always_closed", "always_closed"]
        assert kinds(sim.terminal) == [
            (3, 1024, 1),
            (5, 21, 1),
            (3, 1025, 1),
            (5, 22, 1),
            (3, 1026, 2),
            (3, 1027, 1),
            (3, 1027, 2),
        ]
        await adapter.aclose()


@pytest.mark.trio
async def test_users_add_search_delete() -> None:
    async with simulator() as sim:
        adapter = sim.adapter()
        await adapter.add_user(UserRecord(employee_no="1001", name="Li Wei"))
        with pytest.raises(DeviceError) as caught:
            await adapter.add_user(UserRecord(employee_no="1001", name="Again"))
        assert caught.value.kind is DeviceErrorKind.BAD_REQUEST
        assert caught.value.sub_status_code == "employeeNoAlreadyExist"
        for number in range(2, 40):
            await adapter.add_user(UserRecord(employee_no=str(number)))
        users = await adapter.search_users()
        assert len(users) == 39  # more than one page of 30
        found = await adapter.search_users(["1001"])
        assert [(u.employee_no, u.name) for u in found] == [("1001", "Li Wei")]
        await adapter.delete_user("1001")
        assert await adapter.search_users(["1001"]) == []
        await adapter.aclose()


@pytest.mark.trio
async def test_sync_time_sets_the_device_clock_in_its_own_zone() -> None:
    async with simulator() as sim:
        sim.terminal.clock_skew = dt.timedelta(hours=-3)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        adapter = HikvisionAdapter(sim.config(), utcnow=lambda: now)
        result = await adapter.sync_time()
        assert result["time_zone"] == "CST-8:00:00"
        assert sim.terminal.time_zone == "CST-8:00:00"
        device_now = dt.datetime.fromisoformat((await adapter.get_time())["local_time"])
        # The simulator reads its own wall clock; an hour of tolerance still catches 3 h.
        assert abs(device_now - dt.datetime.now(dt.UTC)) < dt.timedelta(hours=1)
        await adapter.aclose()


@pytest.mark.trio
async def test_event_search_pages_through_more() -> None:
    async with simulator(event_page_size=30) as sim:
        for number in range(75):
            sim.terminal.simulate_face_access(str(1000 + number))
        adapter = sim.adapter()
        events = await adapter.events_since(0)
        assert [e.serial_no for e in events] == list(range(1, 76))
        assert events[0].employee_no == "1000" and events[0].major == 5
        assert [e.serial_no for e in await adapter.events_since(70)] == [71, 72, 73, 74, 75]
        assert await adapter.events_since(75) == []
        assert len(await adapter.events_since(0, limit=40)) == 40
        await adapter.aclose()


@pytest.mark.trio
async def test_firmware_ignoring_begin_serial_no_still_gives_only_new_events() -> None:
    async with simulator(honours_begin_serial_no=False) as sim:
        for number in range(40):
            sim.terminal.simulate_face_access(str(number))
        adapter = sim.adapter()
        assert [e.serial_no for e in await adapter.events_since(37)] == [38, 39, 40]
        await adapter.aclose()


@pytest.mark.trio
async def test_wrong_password_counts_one_failure_per_call() -> None:
    async with simulator(lockout_after=5) as sim:
        adapter = sim.adapter(password="wrong")
        left = []
        for _ in range(3):
            with pytest.raises(DeviceError) as caught:
                await adapter.device_info()
            assert caught.value.kind is DeviceErrorKind.AUTH_FAILED
            assert "authentication failed" in str(caught.value)
            assert "wrong" not in str(caught.value).replace("wrong user name", "")
            left.append(caught.value.retries_left)
        assert left == [4, 3, 2]
        await adapter.aclose()


@pytest.mark.trio
async def test_lockout_then_right_password_fails_until_unlock(
    clock: trio.testing.MockClock,
) -> None:
    async with simulator(lockout_after=2, unlock_s=600) as sim:
        bad = sim.adapter(password="wrong")
        with pytest.raises(DeviceError):
            await bad.device_info()
        with pytest.raises(DeviceError) as caught:
            await bad.device_info()
        assert caught.value.kind is DeviceErrorKind.LOCKED
        good = sim.adapter()
        with pytest.raises(DeviceError) as caught:
            await good.device_info()
        assert caught.value.kind is DeviceErrorKind.LOCKED
        assert caught.value.unlock_in_s == 600
        assert "retry after 600 s" in str(caught.value)
        await trio.sleep(601)
        assert (await good.device_info()).serial_number
        await bad.aclose()
        await good.aclose()


@pytest.mark.trio
async def test_device_busy() -> None:
    async with simulator(busy_rate=1.0) as sim:
        adapter = sim.adapter()
        with pytest.raises(DeviceError) as caught:
            await adapter.door(1, "open")
        assert caught.value.kind is DeviceErrorKind.BUSY
        assert caught.value.status_code == 2
        assert "busy" in str(caught.value)
        sim.terminal.busy_rate = 0.0
        await adapter.door(1, "open")
        await adapter.aclose()


@pytest.mark.trio
async def test_not_supported_and_invalid_operation() -> None:
    async with simulator(unsupported_commands=("alwaysClose",)) as sim:
        adapter = sim.adapter()
        with pytest.raises(DeviceError) as caught:
            await adapter.door(1, "always_close")
        assert caught.value.kind is DeviceErrorKind.NOT_SUPPORTED
        assert caught.value.http_status == 403
        assert caught.value.sub_status_code == "notSupport"
        assert caught.value.error_code == 0x40000001
        with pytest.raises(DeviceError) as caught:
            await adapter.door(7, "open")  # the terminal has one door
        assert caught.value.kind is DeviceErrorKind.NOT_SUPPORTED
        assert caught.value.sub_status_code == "invalidOperation"
        await adapter.aclose()


@pytest.mark.trio
async def test_timeout_when_the_device_answers_too_late(clock: trio.testing.MockClock) -> None:
    async with simulator(latency_ms=30_000) as sim:
        adapter = sim.adapter(timeout_s=2.0)
        with pytest.raises(DeviceError) as caught:
            await adapter.device_info()
        assert caught.value.kind is DeviceErrorKind.TIMEOUT
        assert "within 2 s" in str(caught.value)
        await adapter.aclose()


@pytest.mark.trio
async def test_reboot_downtime_refuses_connections(clock: trio.testing.MockClock) -> None:
    async with simulator(reboot_s=40) as sim:
        adapter = sim.adapter()
        await adapter.device_info()
        assert await adapter.reboot() == {"rebooting": True}
        with pytest.raises(DeviceError) as caught:
            await adapter.device_info()
        assert caught.value.kind is DeviceErrorKind.REBOOTING
        fresh = sim.adapter()  # knows nothing of the reboot: the device is just unreachable
        with pytest.raises(DeviceError) as caught:
            await fresh.device_info()
        assert caught.value.kind is DeviceErrorKind.UNREACHABLE
        with trio.fail_after(120):
            while True:
                try:
                    await adapter.device_info()
                    break
                except DeviceError as exc:
                    assert exc.kind is DeviceErrorKind.REBOOTING
                    await trio.sleep(5)
        status = await adapter.status()
        assert status["system"]["total_reboot_count"] == 1
        assert (3, 123, None) in kinds(sim.terminal)
        await adapter.aclose()
        await fresh.aclose()


@pytest.mark.trio
async def test_unreachable_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with simulator() as sim:
        config = msgspec.structs.replace(sim.config(), port=port)
    adapter = create_adapter(config)
    with pytest.raises(DeviceError) as caught:
        await adapter.device_info()
    assert caught.value.kind is DeviceErrorKind.UNREACHABLE
    await adapter.aclose()


@pytest.mark.trio
async def test_nonce_reuse_quirk_takes_a_fresh_challenge() -> None:
    async with simulator(nonce_max_uses=3, lockout_after=2) as sim:
        adapter = sim.adapter()
        for _ in range(10):
            await adapter.device_info()
        await adapter.aclose()
        # What a client that keeps the dead nonce sees: stuck at 401, no new challenge.
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{sim.port}", auth=httpx.DigestAuth("admin", PASSWORD)
        ) as naive:
            answers = [(await naive.get("/ISAPI/System/deviceInfo")).status_code for _ in range(5)]
        assert answers[:2] == [200, 200]
        assert answers[2:] == [401, 401, 401]


@pytest.mark.trio
async def test_password_never_in_reprs_or_errors() -> None:
    async with simulator(lockout_after=1) as sim:
        adapter = sim.adapter(password="wrong-Secret-42")
        with pytest.raises(DeviceError) as caught:
            await adapter.device_info()
        for text in (str(caught.value), repr(caught.value), repr(adapter)):
            assert "wrong-Secret-42" not in text
            assert PASSWORD not in text
        await adapter.aclose()
