"""The Hikvision adapter enrols people and their cards on a simulated terminal (ISAPI
UserInfo / CardInfo), and a card shown at its door is a granted punch naming them."""

from __future__ import annotations

import pytest

from gateway.devices.base import UserRecord
from tests.devices.sim import simulator


@pytest.mark.trio
async def test_add_update_and_delete_a_user_with_cards() -> None:
    async with simulator() as sim:
        adapter = sim.adapter()
        added = await adapter.add_user(
            UserRecord(employee_no="1001", name="Alice", card_nos=["12345", "777"])
        )
        assert added["updated"] is False
        assert sim.terminal.users["1001"]["name"] == "Alice"
        assert sim.terminal.cards_of("1001") == ["12345", "777"]

        # The same command again (a changed employee) updates, and cards follow exactly.
        again = await adapter.add_user(
            UserRecord(employee_no="1001", name="Alice B.", card_nos=["999"], replace=True)
        )
        assert again["updated"] is True
        assert sim.terminal.users["1001"]["name"] == "Alice B."
        assert sim.terminal.cards_of("1001") == ["999"]
        assert [u.employee_no for u in await adapter.search_users(["1001"])] == ["1001"]

        serial = sim.terminal.simulate_punch(card_no="999")
        event = sim.terminal.events[serial - 1]
        assert (event["major"], event["minor"]) == (5, 1)
        assert event["employeeNoString"] == "1001" and event["name"] == "Alice B."
        unknown = sim.terminal.events[sim.terminal.simulate_punch(card_no="12345") - 1]
        assert (unknown["major"], unknown["minor"]) == (5, 9)

        await adapter.delete_user("1001")
        assert "1001" not in sim.terminal.users
        assert sim.terminal.cards_of("1001") == []
        await adapter.aclose()
