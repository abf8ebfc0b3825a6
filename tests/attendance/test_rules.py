"""Day frames and day results as pure functions: night shifts, DST, lateness, pairing."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from backend.attendance.rules import ShiftRule, compute_day, frame_for, pending_result

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = ShiftRule(start=dt.time(22), end=dt.time(6), working_days=frozenset(range(7)))
DAY_SHIFT = ShiftRule(
    start=dt.time(9), end=dt.time(17), working_days=frozenset(range(5)), late_grace_s=300
)
LATER = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def at(day: str, wall: str, zone: ZoneInfo = BERLIN) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{wall}").replace(tzinfo=zone).astimezone(dt.UTC)


def test_a_night_shift_is_one_day_and_windows_tile() -> None:
    monday = frame_for(dt.date(2026, 3, 9), NIGHT, BERLIN)
    tuesday = frame_for(dt.date(2026, 3, 10), NIGHT, BERLIN)
    assert monday.scheduled_start == at("2026-03-09", "22:00")
    assert monday.scheduled_end == at("2026-03-10", "06:00")
    assert monday.window_end == tuesday.window_start  # no gap, no overlap
    punches = [at("2026-03-09", "21:55"), at("2026-03-10", "06:10")]
    result = compute_day(monday, NIGHT, punches, [], LATER, False)
    assert result.status == "present"
    assert result.worked_s == 8 * 3600 + 15 * 60
    assert compute_day(tuesday, NIGHT, punches, [], LATER, False).status == "absent"


def test_dst_spring_forward_night_is_seven_hours() -> None:
    # Europe/Berlin skips 02:00-03:00 on 2026-03-29.
    frame = frame_for(dt.date(2026, 3, 28), NIGHT, BERLIN)
    assert frame.scheduled_end - frame.scheduled_start == dt.timedelta(hours=7)
    punches = [at("2026-03-28", "22:00"), at("2026-03-29", "06:00")]
    assert compute_day(frame, NIGHT, punches, [], LATER, False).worked_s == 7 * 3600


def test_dst_fall_back_night_is_nine_hours() -> None:
    frame = frame_for(dt.date(2026, 10, 24), NIGHT, BERLIN)
    assert frame.scheduled_end - frame.scheduled_start == dt.timedelta(hours=9)


def test_a_skipped_wall_time_moves_forward() -> None:
    shift = ShiftRule(start=dt.time(2, 30), end=dt.time(10), working_days=frozenset(range(7)))
    frame = frame_for(dt.date(2026, 3, 29), shift, BERLIN)
    assert frame.scheduled_start == at("2026-03-29", "03:30")


def test_late_counts_from_start_past_the_grace_only() -> None:
    frame = frame_for(dt.date(2026, 3, 10), DAY_SHIFT, BERLIN)
    within = compute_day(
        frame, DAY_SHIFT, [at("2026-03-10", "09:04"), at("2026-03-10", "17:01")], [], LATER, False
    )
    assert within.status == "present" and within.late_s == 0
    late = compute_day(
        frame, DAY_SHIFT, [at("2026-03-10", "09:20"), at("2026-03-10", "17:01")], [], LATER, False
    )
    assert late.status == "late" and late.late_s == 20 * 60


def test_early_leave_lone_punch_and_double_punch() -> None:
    frame = frame_for(dt.date(2026, 3, 10), DAY_SHIFT, BERLIN)
    early = compute_day(
        frame, DAY_SHIFT, [at("2026-03-10", "08:55"), at("2026-03-10", "16:00")], [], LATER, False
    )
    assert early.status == "early_leave" and early.early_leave_s == 3600
    # A terminal double punch within the gap is one punch: a lone punch, missing its pair.
    lone = compute_day(
        frame,
        DAY_SHIFT,
        [at("2026-03-10", "08:55"), at("2026-03-10", "08:55:30")],
        [],
        LATER,
        False,
    )
    assert lone.status == "missing_punch" and lone.worked_s == 0 and len(lone.punches) == 1
    # While the window is open, a lone punch is someone still at work.
    during = compute_day(
        frame, DAY_SHIFT, [at("2026-03-10", "08:55")], [], at("2026-03-10", "12:00"), False
    )
    assert during.status == "present" and not during.final


def test_days_with_nothing_are_absent_off_or_pending() -> None:
    tuesday = frame_for(dt.date(2026, 3, 10), DAY_SHIFT, BERLIN)
    saturday = frame_for(dt.date(2026, 3, 14), DAY_SHIFT, BERLIN)
    assert pending_result(tuesday, LATER).status == "absent"
    assert pending_result(tuesday, at("2026-03-10", "10:00")).status == "pending"
    assert pending_result(saturday, LATER).status == "day_off"
