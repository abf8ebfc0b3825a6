"""Privacy requests about one employee: everything held about them (a zip of JSON and CSV),
and the erasure of their personal data.

Whose data is it: the logs of the workstations linked to the employee, for the periods each
was theirs (`employee_agents`), the door events naming their employee number or one of their
cards, their punches, attendance days and the activity sums of their workstations' periods.

Erasure deletes all of that, in the database and in the archive: each archived month holding
such rows is rewritten without them under a new manifest (the old file removed), rather than
listed in a tombstone beside it, because a tombstone leaves the data in the archive, and a
restore or any other reader of the Parquet files would have to honour it forever. The
employee's row stays, as a tombstone: name `erased`, no department, zone, cards or
workstations, status `left` (so the terminals are told to delete the user); the employee
number stays, being the organisation's own key for the person at its terminals.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from backend.attendance.directory import EMPLOYEE_SQL, employee_out, read_employee
from backend.audit import record
from backend.lifecycle.archive import next_batch, org_lock, rewrite_month
from backend.lifecycle.store import ArchiveStore, parse_month
from backend.logging import get_logger

log = get_logger("backend.lifecycle.privacy")

ERASED_NAME = "erased"
FETCH_ROWS = 2_000
_FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


@dataclass
class Subject:
    """What identifies one employee's data."""

    org_id: uuid.UUID
    employee_id: uuid.UUID
    employee_no: str
    cards: list[str]
    # (agent_uid, valid_from, valid_to or far future)
    periods: list[tuple[str, dt.datetime, dt.datetime]]


async def load_subject(conn: Any, org_id: uuid.UUID, employee_id: uuid.UUID) -> Subject:
    """Raises NotFound (404) for an employee of another organisation or none."""
    employee = await read_employee(conn, org_id, employee_id)
    periods = await conn.fetch(
        "SELECT agent_uid, valid_from, valid_to FROM employee_agents"
        " WHERE org_id = $1 AND employee_id = $2 ORDER BY valid_from",
        org_id,
        employee_id,
    )
    return Subject(
        org_id=org_id,
        employee_id=employee_id,
        employee_no=employee.employee_no,
        cards=list(employee.card_nos),
        periods=[(p["agent_uid"], p["valid_from"], p["valid_to"] or _FAR_FUTURE) for p in periods],
    )


# The subject's logs in agent_logs: $1 org, $2..$4 periods (uid, from, to), $5 number, $6 cards.
_THEIR_LOGS = """
org_id = $1 AND (
    EXISTS (SELECT 1 FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[])
                AS p(uid, since, until)
            WHERE agent_logs.agent_uid = p.uid AND agent_logs.ts >= p.since
              AND agent_logs.ts < p.until)
    OR (kind = 'device_event' AND (data->>'employee_no' = $5 OR data->>'card_no' = ANY($6)))
)
"""
_THEIR_ACTIVITY = """
org_id = $1 AND EXISTS (
    SELECT 1 FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[]) AS p(uid, since, until)
    WHERE agent_uid = p.uid AND bucket >= p.since AND bucket < p.until)
"""
_THEIR_PUNCHES = "org_id = $1 AND (employee_no = $2 OR card_no = ANY($3))"


def _log_args(subject: Subject) -> tuple[Any, ...]:
    return (
        subject.org_id,
        [p[0] for p in subject.periods],
        [p[1] for p in subject.periods],
        [p[2] for p in subject.periods],
        subject.employee_no,
        subject.cards,
    )


def archived_mask(subject: Subject, batch: Any) -> Any:
    """Which rows of an archived batch are the subject's (a boolean array)."""
    mask = pa.array([False] * batch.num_rows)
    ts = batch.column("ts")
    uid = batch.column("agent_uid")
    for agent_uid, since, until in subject.periods:
        period = pc.and_(
            pc.equal(uid, agent_uid),
            pc.and_(
                pc.greater_equal(ts, pa.scalar(since, ts.type)),
                pc.less(ts, pa.scalar(until, ts.type)),
            ),
        )
        mask = pc.or_(mask, period)
    kinds = batch.column("kind").to_pylist()
    data = batch.column("data").to_pylist()
    cards = set(subject.cards)
    doors = []
    for kind, text in zip(kinds, data, strict=True):
        if kind != "device_event":
            doors.append(False)
            continue
        fields = json.loads(text)
        doors.append(
            fields.get("employee_no") == subject.employee_no or fields.get("card_no") in cards
        )
    return pc.or_(mask, pa.array(doors))


class _Drain(io.RawIOBase):
    """A write-only stream whose bytes are taken out as they come (zip to HTTP)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def _csv_line(values: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else _text(v) for v in values])
    return out.getvalue().encode()


def _text(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


_LOG_HEADER = ["source", "ts", "id", "agent_uid", "kind", "received_at", "data"]
_TABLES: list[tuple[str, str, str]] = [
    ("punches.csv", "SELECT * FROM punches WHERE " + _THEIR_PUNCHES + " ORDER BY ts", "punches"),
    (
        "attendance_days.csv",
        "SELECT * FROM attendance_days WHERE org_id = $1 AND employee_id = $2 ORDER BY work_date",
        "days",
    ),
    ("activity.csv", "SELECT * FROM activity_buckets WHERE " + _THEIR_ACTIVITY, "activity"),
    ("app_usage.csv", "SELECT * FROM activity_usage WHERE " + _THEIR_ACTIVITY, "activity"),
]


def _table_args(subject: Subject, which: str) -> tuple[Any, ...]:
    if which == "punches":
        return (subject.org_id, subject.employee_no, subject.cards)
    if which == "days":
        return (subject.org_id, subject.employee_id)
    return _log_args(subject)[:4]


async def export_zip(pool: Any, store: ArchiveStore, subject: Subject) -> AsyncIterator[bytes]:
    """The zip, chunk by chunk: employee.json, then one CSV per table, logs.csv last (from
    the database, then from the archive); never more than a batch of rows in memory."""
    sink = _Drain()
    archive = zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_DEFLATED)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        row = await conn.fetchrow(EMPLOYEE_SQL + " WHERE e.id = $1", subject.employee_id)
        agents = await conn.fetch(
            "SELECT a.agent_uid, a.valid_from, a.valid_to, i.hostname, i.os"
            " FROM employee_agents a LEFT JOIN agent_instances i"
            " ON i.org_id = a.org_id AND i.agent_uid = a.agent_uid"
            " WHERE a.employee_id = $1 ORDER BY a.valid_from",
            subject.employee_id,
        )
        document = {
            "employee": msgspec.to_builtins(employee_out(row)),
            "cards": subject.cards,
            "workstations": [dict(a) for a in agents],
            "exported_at": dt.datetime.now(dt.UTC),
        }
        archive.writestr("employee.json", json.dumps(document, default=_text, indent=2))
        yield sink.take()
        for name, query, which in _TABLES:
            with archive.open(name, mode="w", force_zip64=True) as entry:
                statement = await conn.prepare(query)
                entry.write(_csv_line([column.name for column in statement.get_attributes()]))
                cursor = await statement.cursor(*_table_args(subject, which))
                while rows := await cursor.fetch(FETCH_ROWS):
                    for record in rows:
                        entry.write(_csv_line(list(record.values())))
                    yield sink.take()
            yield sink.take()
        with archive.open("logs.csv", mode="w", force_zip64=True) as entry:
            entry.write(_csv_line(_LOG_HEADER))
            cursor = await conn.cursor(
                "SELECT ts, id, agent_uid, kind, received_at, data::text FROM agent_logs"
                f" WHERE {_THEIR_LOGS} ORDER BY ts, id",
                *_log_args(subject),
            )
            while rows := await cursor.fetch(FETCH_ROWS):
                for record in rows:
                    entry.write(_csv_line(["database", *record.values()]))
                yield sink.take()
            for manifest in store.manifests(subject.org_id):
                batches = store.batches(manifest)
                while (batch := await next_batch(batches)) is not None:
                    theirs = batch.filter(archived_mask(subject, batch)).to_pylist()
                    for r in theirs:
                        entry.write(
                            _csv_line(
                                ["archive", r["ts"], r["id"], r["agent_uid"], r["kind"],
                                 r["received_at"], r["data"]]
                            )
                        )  # fmt: skip
                    yield sink.take()
    archive.close()
    yield sink.take()


class Erased(msgspec.Struct, kw_only=True):
    employee_id: uuid.UUID
    logs: int
    archived_logs: int
    archived_months_rewritten: int
    punches: int
    attendance_days: int
    activity_buckets: int
    app_usage: int
    cards: int
    workstations: int


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[1])


async def erase(
    pool: Any, store: ArchiveStore, org_id: uuid.UUID, employee_id: uuid.UUID
) -> Erased:
    """Erase the employee's personal data in one transaction, the archive rewritten inside
    it (under the organisation's archive lock): a failure leaves the database as it was and
    the request can simply be repeated."""
    async with pool.acquire() as conn, org_lock(conn, org_id), conn.transaction():
        subject = await load_subject(conn, org_id, employee_id)
        await conn.execute("SELECT 1 FROM employees WHERE id = $1 FOR UPDATE", employee_id)
        args = _log_args(subject)
        logs = _count(await conn.execute(f"DELETE FROM agent_logs WHERE {_THEIR_LOGS}", *args))
        punches = _count(
            await conn.execute(
                f"DELETE FROM punches WHERE {_THEIR_PUNCHES}",
                org_id,
                subject.employee_no,
                subject.cards,
            )
        )
        days = _count(
            await conn.execute(
                "DELETE FROM attendance_days WHERE org_id = $1 AND employee_id = $2",
                org_id,
                employee_id,
            )
        )
        buckets = _count(
            await conn.execute(f"DELETE FROM activity_buckets WHERE {_THEIR_ACTIVITY}", *args[:4])
        )
        usage = _count(
            await conn.execute(f"DELETE FROM activity_usage WHERE {_THEIR_ACTIVITY}", *args[:4])
        )
        # Nothing is left to recompute: pending marks would rebuild empty days for them.
        await conn.execute(
            "DELETE FROM attendance_dirty WHERE org_id = $1 AND subject = ANY($2)",
            org_id,
            [subject.employee_no, *subject.cards, *(p[0] for p in subject.periods)],
        )
        cards = _count(
            await conn.execute("DELETE FROM employee_cards WHERE employee_id = $1", employee_id)
        )
        workstations = _count(
            await conn.execute("DELETE FROM employee_agents WHERE employee_id = $1", employee_id)
        )
        await conn.execute(
            "UPDATE employees SET name = $2, department = NULL, time_zone = NULL,"
            " status = 'left', left_at = coalesce(left_at, now()), updated_at = now()"
            " WHERE id = $1",
            employee_id,
            ERASED_NAME,
        )
        archived = rewritten = 0
        for manifest in store.manifests(org_id):
            removed = await rewrite_month(
                store,
                org_id,
                parse_month(manifest.month),
                lambda batch: archived_mask(subject, batch),
            )
            archived += removed
            rewritten += removed > 0
        await audit_privacy_request(conn, "employee.erase", org_id, employee_id)
    log.info("employee erased", org_id=str(org_id), employee_id=str(employee_id), logs=logs)
    return Erased(
        employee_id=employee_id,
        logs=logs,
        archived_logs=archived,
        archived_months_rewritten=rewritten,
        punches=punches,
        attendance_days=days,
        activity_buckets=buckets,
        app_usage=usage,
        cards=cards,
        workstations=workstations,
    )


async def audit_privacy_request(
    conn: Any, action: str, org_id: uuid.UUID, employee_id: uuid.UUID
) -> None:
    """Record a privacy request (`employee.export`, `employee.erase`) in the audit trail, in
    the caller's transaction; the event names the employee by id only."""
    log.info("privacy request", action=action, org_id=str(org_id), employee_id=str(employee_id))
    await record(conn, action, "employee", employee_id)
