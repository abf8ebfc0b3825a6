"""A demo crowd for the simulated terminal: people enrolled with cards who badge in and out
at the door over the day, a few of them late, one not at all.

Their day is anchored on a shift start (the terminal's local wall clock). Punches already
due when the player starts are logged at once, stamped with their own times; later ones
happen in real time. Day after day, the same again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import trio

from devsim.hikvision.terminal import CARD_PASSED, SimulatedTerminal


@dataclass(frozen=True, slots=True)
class DemoPerson:
    employee_no: str
    name: str
    card_no: str
    department: str
    # Minutes from the shift start; None: does not badge (absent, or forgot to badge out).
    arrives_min: int | None
    leaves_min: int | None


SHIFT_HOURS = 8
DEMO_PEOPLE: tuple[DemoPerson, ...] = (
    DemoPerson("1001", "Ada Lovelace", "10001001", "Engineering", -20, 8 * 60 + 5),
    DemoPerson("1002", "Alan Turing", "10001002", "Engineering", -7, 8 * 60 + 30),
    DemoPerson("1003", "Grace Hopper", "10001003", "Engineering", 2, 8 * 60),
    DemoPerson("1004", "Edsger Dijkstra", "10001004", "Engineering", 24, 8 * 60 + 40),
    DemoPerson("1005", "Barbara Liskov", "10001005", "Sales", -3, 7 * 60),
    DemoPerson("1006", "Donald Knuth", "10001006", "Sales", 47, 8 * 60 + 50),
    DemoPerson("1007", "Frances Allen", "10001007", "Sales", -15, None),
    DemoPerson("1008", "John Backus", "10001008", "Sales", None, None),
)


def enrol(terminal: SimulatedTerminal, people: tuple[DemoPerson, ...] = DEMO_PEOPLE) -> None:
    """Put the people and their cards on the terminal, as an installer would have."""
    for person in people:
        terminal.users[person.employee_no] = {
            "employeeNo": person.employee_no,
            "name": person.name,
            "userType": "normal",
        }
        terminal.cards[person.card_no] = person.employee_no


def day_punches(
    shift_start: dt.datetime, people: tuple[DemoPerson, ...] = DEMO_PEOPLE
) -> list[tuple[dt.datetime, DemoPerson]]:
    """The day's punches in time order."""
    punches = [
        (shift_start + dt.timedelta(minutes=minutes), person)
        for person in people
        for minutes in (person.arrives_min, person.leaves_min)
        if minutes is not None
    ]
    return sorted(punches, key=lambda item: (item[0], item[1].employee_no))


def latest_start(now_local: dt.datetime, start: dt.time) -> dt.datetime:
    """The shift start at or before `now_local` (same zone)."""
    candidate = now_local.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    return candidate if candidate <= now_local else candidate - dt.timedelta(days=1)


def badge(terminal: SimulatedTerminal, when: dt.datetime, person: DemoPerson) -> int:
    return terminal.log_event(
        *CARD_PASSED,
        door=1,
        employeeNoString=person.employee_no,
        name=person.name,
        currentVerifyMode="card",
        cardNo=person.card_no,
        time=when.isoformat(),
    )


async def play_attendance(terminal: SimulatedTerminal, shift_start: dt.time) -> None:
    """Badge the demo crowd in and out, day after day, until cancelled."""
    enrol(terminal)
    day_start = latest_start(terminal.local_now(), shift_start)
    while True:
        for when, person in day_punches(day_start):
            delay = (when - terminal.local_now()).total_seconds()
            if delay > 0:
                await trio.sleep(delay)
            badge(terminal, when, person)
        day_start += dt.timedelta(days=1)
