"""The simulator's demo crowd: enrolled with cards, badging at their times, late ones late."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
import trio.testing

from devsim.hikvision.people import DEMO_PEOPLE, play_attendance
from devsim.hikvision.terminal import SimulatedTerminal, SimulatorConfig

START = dt.datetime(2026, 3, 10, 10, 30, tzinfo=dt.UTC)  # 18:30 at the terminal (UTC+8)


@pytest.mark.trio
async def test_the_crowd_badges_in_then_out_in_time_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    terminal = SimulatedTerminal(
        SimulatorConfig(password="pw"),
        utcnow=lambda: START + dt.timedelta(seconds=trio.current_time()),
    )
    with trio.move_on_after(6 * 3600):
        await play_attendance(terminal, dt.time(14))
    assert set(terminal.cards.values()) == {p.employee_no for p in DEMO_PEOPLE}
    times = [dt.datetime.fromisoformat(e["time"]) for e in terminal.events]
    assert times == sorted(times)
    assert {(e["major"], e["minor"]) for e in terminal.events} == {(5, 1)}
    arrivals = {
        e["employeeNoString"]: dt.datetime.fromisoformat(e["time"]).strftime("%H:%M")
        for e in reversed(terminal.events)
    }
    # Everyone who comes came, at their minute; Edsger and Donald late; John never.
    assert arrivals["1004"] == "14:24" and arrivals["1006"] == "14:47"
    assert "1008" not in arrivals
    # Before the player started (18:30) the morning was logged at once; by 00:30 the
    # leaves (22:00 onwards) happened too: 7 arrivals and 6 leaves.
    assert len(terminal.events) == 13
