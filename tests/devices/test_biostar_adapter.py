"""The BioStar 2 adapter against the simulated server on a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from devsim.biostar import BioStarServer, ServerConfig, serve
from gateway.devices.base import DeviceError, DeviceErrorKind, UserRecord
from gateway.devices.biostar import PAGE_SIZE, BioStarAdapter
from protocol.control import DeviceConfig

PASSWORD = "Bio-Pw-7"


@asynccontextmanager
async def server_and_adapter(
    password: str = PASSWORD, **knobs: object
) -> AsyncIterator[tuple[BioStarServer, BioStarAdapter]]:
    server = BioStarServer(ServerConfig(port=0, password=PASSWORD, **knobs))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, server)
        adapter = BioStarAdapter(
            DeviceConfig(
                device_id="d1",
                vendor="biostar",
                name="office",
                host="127.0.0.1",
                port=port,
                username="admin",
                password=password,
            )
        )
        try:
            yield server, adapter
        finally:
            await adapter.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_events_come_once_in_order_across_pages() -> None:
    async with server_and_adapter() as (server, adapter):
        for _ in range(PAGE_SIZE * 2 + 50):
            server.punch()
        events = await adapter.events_since(0, limit=10_000)
        assert [e.serial_no for e in events] == list(range(1, PAGE_SIZE * 2 + 51))
        assert await adapter.events_since(events[-1].serial_no) == []
        server.punch()
        (newest,) = await adapter.events_since(events[-1].serial_no)
        assert newest.serial_no == PAGE_SIZE * 2 + 51
        # The gateway lost what it read (its append failed): the same events come again.
        assert len(await adapter.events_since(0, limit=10_000)) == PAGE_SIZE * 2 + 51


@pytest.mark.trio
async def test_an_expired_session_logs_in_again_and_a_wrong_password_does_not_retry() -> None:
    async with server_and_adapter() as (server, adapter):
        await adapter.door(1, "open")
        server.state.sessions.clear()  # the server forgot every session (expiry, restart)
        await adapter.door(2, "always_open")
        assert server.state.logins == 2
        assert server.state.door_modes == {1: "open", 2: "unlock"}
    async with server_and_adapter(password="wrong") as (server, adapter):
        with pytest.raises(DeviceError) as caught:
            await adapter.door(1, "open")
        assert caught.value.kind is DeviceErrorKind.AUTH_FAILED
        assert "wrong" not in str(caught.value)


@pytest.mark.trio
async def test_users_with_cards_and_refusals() -> None:
    async with server_and_adapter() as (server, adapter):
        await adapter.add_user(UserRecord(employee_no="2001", name="Ann", card_no="12345678"))
        assert server.state.users["2001"]["cards"] == [{"id": "1"}]
        assert server.state.cards == {"1": "12345678"}
        with pytest.raises(DeviceError) as duplicate:
            await adapter.add_user(UserRecord(employee_no="2001"))
        assert duplicate.value.kind is DeviceErrorKind.BAD_REQUEST
        assert "Duplicated user ID" in str(duplicate.value)
        assert [u.employee_no for u in await adapter.search_users(["2001", "9"])] == ["2001"]
        await adapter.delete_user("2001")
        with pytest.raises(DeviceError):
            await adapter.delete_user("2001")
        with pytest.raises(DeviceError) as bad_door:
            await adapter.door(9, "open")
        assert "Door 9 not found" in str(bad_door.value)
