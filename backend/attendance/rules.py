"""Attendance rules as pure functions: a shift's day frame in a zone, and one day's result.

A work date D's *frame* is the shift instance that starts on D (local wall clock of the
employee's zone), with the punch window around it. Consecutive windows tile the timeline:
each is cut halfway through the off-duty gap between shifts, at the same local wall-clock
time every day, so a night shift 22:00-06:00 is one day (its window runs 14:00 to 14:00)
and no punch belongs to two days or to none. Without a shift the day runs local midnight to
midnight. Bounds are built per date with zoneinfo, so DST makes a night shift 7 h or 9 h of
elapsed time; a wall time the clock skips moves forward, an ambiguous one takes the first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

DAY = dt.timedelta(days=1)
# Activity this far before the scheduled start or after the scheduled end is flagged.
OUTSIDE_SHIFT_MARGIN = dt.timedelta(hours=2)

STATUSES = ("present", "late", "early_leave", "absent", "day_off", "missing_punch", "pending")


@dataclass(frozen=True, slots=True)
class ShiftRule:
    start: dt.time
    end: dt.time
    # Weekdays worked, 0 = Monday.
    working_days: frozenset[int]
    late_grace_s: int = 0
    early_grace_s: int = 0
    min_punch_gap_s: int = 60


@dataclass(frozen=True, slots=True)
class DayFrame:
    work_date: dt.date
    working: bool
    scheduled_start: dt.datetime | None
    scheduled_end: dt.datetime | None
    window_start: dt.datetime
    window_end: dt.datetime


@dataclass(frozen=True, slots=True)
class Bucket:
    """PC activity of one workstation in one short UTC interval starting at `start`."""

    start: dt.datetime
    foreground_ms: int
    idle_ms: int
    first_ts: dt.datetime
    last_ts: dt.datetime


@dataclass(slots=True)
class DayResult:
    frame: DayFrame
    status: str
    final: bool
    punches: list[dt.datetime] = field(default_factory=list)
    first_in: dt.datetime | None = None
    last_out: dt.datetime | None = None
    worked_s: int = 0
    late_s: int = 0
    early_leave_s: int = 0
    first_activity: dt.datetime | None = None
    last_activity: dt.datetime | None = None
    active_s: int = 0
    idle_s: int = 0
    flags: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing happened: the same row the report derives for a day it has no row for."""
        return not self.punches and self.first_activity is None


def local_instant(day: dt.date, wall: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The UTC instant of `wall` on `day` in `zone` (skipped wall times move forward)."""
    naive = dt.datetime.combine(day, wall)
    # fold=0 reads a skipped time with the offset before the jump: later in real time.
    return naive.replace(tzinfo=zone).astimezone(dt.UTC)


def _seconds(wall: dt.time) -> int:
    return wall.hour * 3600 + wall.minute * 60 + wall.second


def _wall(seconds: int) -> dt.time:
    seconds %= 86_400
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60)


def frame_for(work_date: dt.date, shift: ShiftRule | None, zone: ZoneInfo) -> DayFrame:
    if shift is None:
        return DayFrame(
            work_date=work_date,
            working=True,
            scheduled_start=None,
            scheduled_end=None,
            window_start=local_instant(work_date, dt.time(0), zone),
            window_end=local_instant(work_date + DAY, dt.time(0), zone),
        )
    start_s, end_s = _seconds(shift.start), _seconds(shift.end)
    length_s = (end_s - start_s) % 86_400 or 86_400
    cut_s = start_s - (86_400 - length_s) // 2
    cut_day = work_date - DAY if cut_s < 0 else work_date
    cut = _wall(cut_s)
    end_day = work_date + DAY if end_s <= start_s else work_date
    return DayFrame(
        work_date=work_date,
        working=work_date.weekday() in shift.working_days,
        scheduled_start=local_instant(work_date, shift.start, zone),
        scheduled_end=local_instant(end_day, shift.end, zone),
        window_start=local_instant(cut_day, cut, zone),
        window_end=local_instant(cut_day + DAY, cut, zone),
    )


def dedupe_punches(punches: Sequence[dt.datetime], min_gap_s: int) -> list[dt.datetime]:
    """Sorted punches with a repeat within `min_gap_s` of the last kept one dropped."""
    kept: list[dt.datetime] = []
    gap = dt.timedelta(seconds=min_gap_s)
    for punch in sorted(punches):
        if not kept or punch - kept[-1] >= gap:
            kept.append(punch)
    return kept


def pending_result(frame: DayFrame, now: dt.datetime) -> DayResult:
    """The day when nothing was punched or recorded in its window."""
    closed = now >= frame.window_end
    status = "day_off" if not frame.working else "absent" if closed else "pending"
    return DayResult(frame=frame, status=status, final=closed)


def compute_day(
    frame: DayFrame,
    shift: ShiftRule | None,
    punches: Sequence[dt.datetime],
    buckets: Sequence[Bucket],
    now: dt.datetime,
    has_workstation: bool,
) -> DayResult:
    """One employee-day from the punches and activity buckets inside its window.

    Pairing is first-in to last-out. Late seconds count from the scheduled start (not from
    start + grace); early-leave seconds up to the scheduled end. A lone punch is a missing
    punch once the window has closed (worked 0); until then the day is in progress.
    """
    result = pending_result(frame, now)
    closed = result.final
    inside = [p for p in punches if frame.window_start <= p < frame.window_end]
    kept = dedupe_punches(inside, shift.min_punch_gap_s if shift else 60)
    result.punches = kept
    if kept:
        result.first_in = kept[0]
        start, end = frame.scheduled_start, frame.scheduled_end
        late = early = 0
        if frame.working and shift is not None and start is not None and end is not None:
            if (kept[0] - start).total_seconds() > shift.late_grace_s:
                late = int((kept[0] - start).total_seconds())
            if (
                len(kept) >= 2
                and (closed or now >= end)
                and (end - kept[-1]).total_seconds() > shift.early_grace_s
            ):
                early = int((end - kept[-1]).total_seconds())
        result.late_s = late
        if len(kept) >= 2:
            result.last_out = kept[-1]
            result.worked_s = int((kept[-1] - kept[0]).total_seconds())
            result.early_leave_s = early
        if len(kept) == 1 and closed:
            result.status = "missing_punch"
        elif late:
            result.status = "late"
        elif early:
            result.status = "early_leave"
        else:
            result.status = "present"
    mine = [b for b in buckets if frame.window_start <= b.start < frame.window_end]
    if mine:
        result.first_activity = min(b.first_ts for b in mine)
        result.last_activity = max(b.last_ts for b in mine)
        # Overlapping or inflated durations cannot make a day hold more than its window.
        longest = int((frame.window_end - frame.window_start).total_seconds())
        active_ms = sum(max(0, b.foreground_ms - b.idle_ms) for b in mine)
        result.active_s = min(active_ms // 1000, longest)
        result.idle_s = min(sum(b.idle_ms for b in mine) // 1000, longest)
    result.flags = _flags(result, has_workstation, closed)
    return result


def _flags(result: DayResult, has_workstation: bool, closed: bool) -> list[str]:
    """Reconciliation flags, for review: never verdicts."""
    flags = []
    if result.active_s > 0 and not result.punches:
        flags.append("pc_active_without_punch")
    if result.punches and has_workstation and result.first_activity is None and closed:
        flags.append("punched_without_pc_activity")
    frame = result.frame
    if (
        result.first_activity is not None
        and result.last_activity is not None
        and frame.scheduled_start is not None
        and frame.scheduled_end is not None
        and (
            result.first_activity < frame.scheduled_start - OUTSIDE_SHIFT_MARGIN
            or result.last_activity > frame.scheduled_end + OUTSIDE_SHIFT_MARGIN
        )
    ):
        flags.append("activity_outside_shift")
    return flags
