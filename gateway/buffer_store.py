"""The buffer's SQLite layout and every statement run on it; blocking, no Trio.

One row per agent request, holding its validated logs as zstd-compressed msgpack
(`unpack` gives back the msgpack bytes of the `list[Log]`) and, when tracing is on, the span
context of the request that brought them (gateway/tracing.py packs it). Rows are
uploaded oldest first: an upload batch is formed by stamping the oldest unassigned rows with
a batch id (stored, so a retry after a restart sends the same rows under the same
Idempotency-Key), and the rows are deleted only once the backend acknowledged that batch.

Queued rows count against the byte cap (`drop_oldest` or `reject` past it). Dead letters,
the logs the backend refused one by one, live in their own bounded space: the byte cap
never evicts them; past their own cap a refused log is counted (`dead_letter_dropped`) and
logged instead of kept. Running totals live in a small table updated in the same
transaction as the rows, so start-up reads a handful of rows however long the backlog is.
Another connection (`td-gateway dead-letters`) may change the file while the gateway runs:
`begin` notices through `PRAGMA data_version` and re-reads the totals.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import apsw
import zstandard

from gateway.errors import BufferFull, BufferTooLarge
from gateway.sqlite import query

# Per-row bookkeeping (rowid, sizes, timestamps, index entry) on top of the payload bytes.
ROW_OVERHEAD = 64
# Keeps one upload POST well under the backend's body limit even before compression.
UPLOAD_MAX_BYTES = 16 * 1024 * 1024
# Reclaim disk space once the queue has drained and this many pages are free.
VACUUM_MIN_FREE_PAGES = 256
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
# The backend's reason is kept with each dead letter, cut to this length.
DETAIL_MAX_CHARS = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    rowid INTEGER PRIMARY KEY,
    agent_uid TEXT NOT NULL,
    n_logs INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    upload_id BLOB,
    trace_context BLOB,  -- the agent post's span context; NULL with tracing off
    payload BLOB NOT NULL  -- last, so reading the other columns skips its overflow pages
);
CREATE INDEX IF NOT EXISTS rows_by_upload ON rows(upload_id) WHERE upload_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS uploads (
    id BLOB PRIMARY KEY,
    created_at REAL NOT NULL,
    first_rowid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    rowid INTEGER PRIMARY KEY,
    upload_id BLOB NOT NULL,
    agent_uid TEXT NOT NULL,
    n_logs INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""

TOTALS = (
    "queue_logs",
    "queue_rows",
    "queue_bytes",
    "dead_bytes",
    "dropped_total",
    "dead_letter_total",
    "dead_letter_batches",
    "dead_logs",
    "dead_letter_dropped",
)
# One row, so a commit updates every running total with a single statement.
_TOTALS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 1), "
    + ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in TOTALS)
    + ")"
)
_SAVE_TOTALS = f"UPDATE totals SET {', '.join(f'{name} = ?' for name in TOTALS)} WHERE id = 1"
_READ_TOTALS = f"SELECT {', '.join(TOTALS)} FROM totals WHERE id = 1"


@dataclass(frozen=True)
class BufferStats:
    """The buffer's figures right after the last commit."""

    queue_depth: int
    queue_rows: int
    queue_bytes: int
    dead_bytes: int
    max_bytes: int
    dropped_total: int
    dead_letter_total: int
    dead_letter_batches: int
    oldest_created_at: float | None
    dead_logs: int = 0  # held now (dead_letter_total counts every refusal ever)
    dead_max_bytes: int = DEAD_LETTER_MAX_BYTES
    dead_letter_dropped: int = 0  # refused logs not kept: the dead-letter space was full

    def oldest_age_s(self, now: float | None = None) -> float:
        if self.oldest_created_at is None:
            return 0.0
        return max(0.0, (now or time.time()) - self.oldest_created_at)


@dataclass(frozen=True)
class Claim:
    """An upload batch: the rows under one batch id, ready to send."""

    batch_id: uuid.UUID
    created_at: dt.datetime
    groups: list[tuple[str, bytes]]  # (agent_uid, packed list[Log]; see `unpack`) in row order
    n_logs: int
    nbytes: int
    # The span contexts of the agent posts whose logs the batch holds (None: not traced).
    trace_contexts: list[bytes | None] = field(default_factory=list)


@dataclass(frozen=True)
class DeadLog:
    """One log of an upload batch the backend refused, with the backend's reason."""

    group: int  # index into the batch's `groups`
    agent_uid: str
    packed_log: bytes  # msgpack of a one-element list[Log]
    status: int
    detail: str


@dataclass(frozen=True)
class Settled:
    uploaded: int  # logs the backend took
    dead_lettered: int  # refused logs kept as dead letters
    dead_letter_dropped: int  # refused logs not kept (dead-letter space full)


@dataclass
class TxEffects:
    """What a transaction did that the async side must learn about after the commit."""

    appended: bool = False
    # Batches handed out, so the writer marks them in flight before any later transaction
    # can drop them (marking them after the caller resumed let a dropped batch be sent).
    claimed_uploads: set[uuid.UUID] = field(default_factory=set)
    dropped_uploads: set[uuid.UUID] = field(default_factory=set)
    corrupt: bool = False  # SQLite found the file damaged: the buffer starts a fresh one
    failure: str | None = None  # why the transaction did not commit


class BufferStore:
    """Blocking operations on one APSW connection; the caller runs them in transactions."""

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int,
        overflow: Literal["drop_oldest", "reject"],
        durability: Literal["normal", "full"],
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> None:
        self.max_bytes = max_bytes
        self.dead_letter_max_bytes = dead_letter_max_bytes
        # Logs compress ~3x, so the same byte cap rides out a three times longer outage.
        # Level 1 costs ~30 us per 100 logs, paid here in the writer thread, off the event loop.
        self._compressor = zstandard.ZstdCompressor(level=1)
        self.overflow = overflow
        self.conn = apsw.Connection(path)
        self.conn.setbusytimeout(5000)
        # auto_vacuum only takes effect before the first table exists, so set it first.
        self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={durability.upper()}")
        with self.conn:
            self.conn.execute(_SCHEMA)
            self._add_missing_row_columns()
            self.conn.execute(_TOTALS_SCHEMA)
            self._add_missing_totals()
            self.conn.execute("INSERT OR IGNORE INTO totals(id) VALUES (1)")
        self.totals = self._read_totals()
        self._data_version = self._read_data_version()
        self._totals_changed = False
        # The head row's created_at, re-read only after something deleted rows.
        self._oldest: float | None = None
        self._oldest_known = False
        # Batches handed to an uploader and not yet acked; lives as long as this process.
        self.claimed: set[bytes] = set()
        self._claimed_in_tx: set[bytes] = set()

    def close(self) -> None:
        self.conn.close()

    # ---- transactions ----------------------------------------------------------------------

    def begin(self) -> dict[str, int]:
        """Start a write transaction; returns the totals to restore if it rolls back."""
        self.conn.execute("BEGIN IMMEDIATE")
        self._claimed_in_tx = set()
        version = self._read_data_version()
        if version != self._data_version:  # another connection committed (the CLI)
            self._data_version = version
            self.totals = self._read_totals()
            self._oldest_known = False
        return dict(self.totals)

    def commit(self) -> None:
        if self._totals_changed:
            self.conn.execute(_SAVE_TOTALS, tuple(self.totals[name] for name in TOTALS))
            self._totals_changed = False
        self.conn.execute("COMMIT")

    def rollback(self, saved: dict[str, int]) -> None:
        if not self.conn.get_autocommit():  # SQLite may already have rolled back on its own
            self.conn.execute("ROLLBACK")
        self.totals = saved
        self._totals_changed = False
        self._oldest_known = False
        # Claims made in the failed transaction never reached their callers: hand them out
        # again. Claims it released stay released; a resend reuses the batch id either way.
        self.claimed -= self._claimed_in_tx

    # ---- operations, each run inside a transaction -----------------------------------------

    def append(
        self,
        fx: TxEffects,
        agent_uid: str,
        n_logs: int,
        payload: bytes,
        now: float,
        trace_context: bytes | None = None,
    ) -> None:
        """Queue the msgpack bytes of a `list[Log]`; they are stored compressed."""
        payload = self._compressor.compress(payload)
        nbytes = len(payload) + len(agent_uid) + ROW_OVERHEAD
        if nbytes > self.max_bytes:
            raise BufferTooLarge(
                f"this request needs {nbytes} bytes and the whole buffer holds {self.max_bytes}"
            )
        excess = self._used() + nbytes - self.max_bytes
        if excess > 0:
            if self.overflow == "reject":
                raise BufferFull(retry_after_s=5)
            self._drop_oldest(fx, excess)
        self.conn.execute(
            "INSERT INTO rows(agent_uid, n_logs, nbytes, created_at, trace_context, payload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (agent_uid, n_logs, nbytes, now, trace_context, payload),
        )
        self._add(queue_logs=n_logs, queue_rows=1, queue_bytes=nbytes)
        if self._oldest_known and self._oldest is None:
            self._oldest = now
        fx.appended = True

    def claim(self, max_logs: int, now: float) -> Claim | None:
        """The oldest upload batch not already claimed; else one formed from unassigned rows."""
        for upload_id, created_at in query(
            self.conn, "SELECT id, created_at FROM uploads ORDER BY first_rowid"
        ):
            if upload_id not in self.claimed:
                self.claimed.add(upload_id)
                self._claimed_in_tx.add(upload_id)
                return self._load_claim(upload_id, created_at)
        picked: list[tuple[Any, ...]] = []
        n_logs = nbytes = 0
        for row in self.conn.execute(
            "SELECT rowid, agent_uid, n_logs, nbytes, payload, trace_context FROM rows"
            " WHERE upload_id IS NULL ORDER BY rowid"
        ):  # a cursor, not `query`: it stops reading at the batch limit
            if picked and (n_logs + row[2] > max_logs or nbytes + row[3] > UPLOAD_MAX_BYTES):
                break
            picked.append(row)
            n_logs += row[2]
            nbytes += row[3]
        if not picked:
            return None
        batch_id = uuid.uuid4()
        self.conn.execute(
            "INSERT INTO uploads(id, created_at, first_rowid) VALUES (?, ?, ?)",
            (batch_id.bytes, now, picked[0][0]),
        )
        self.conn.execute(
            "UPDATE rows SET upload_id = ? WHERE upload_id IS NULL AND rowid <= ?",
            (batch_id.bytes, picked[-1][0]),
        )
        self.claimed.add(batch_id.bytes)
        self._claimed_in_tx.add(batch_id.bytes)
        return Claim(
            batch_id=batch_id,
            created_at=_utc(now),
            groups=[(row[1], row[4]) for row in picked],
            n_logs=n_logs,
            nbytes=nbytes,
            trace_contexts=[row[5] for row in picked],
        )

    def ack(self, batch_id: uuid.UUID) -> int:
        """Delete an uploaded batch; returns how many logs it still held (0 if dropped)."""
        return self._delete_upload(batch_id.bytes)

    def settle(self, batch_id: uuid.UUID, dead: Sequence[DeadLog], now: float) -> Settled:
        """Delete an uploaded batch, keeping the logs the backend refused as dead letters.

        Nothing happens to a batch drop_oldest already removed (its logs are counted there).
        """
        found = query(
            self.conn,
            "SELECT created_at FROM rows WHERE upload_id = ? ORDER BY rowid",
            (batch_id.bytes,),
        )
        if not found:
            return Settled(0, 0, 0)
        kept = lost = added_bytes = 0
        for item in dead:
            payload = self._compressor.compress(item.packed_log)
            detail = item.detail[:DETAIL_MAX_CHARS]
            nbytes = len(payload) + len(item.agent_uid) + len(detail) + ROW_OVERHEAD
            if self.totals["dead_bytes"] + added_bytes + nbytes > self.dead_letter_max_bytes:
                lost += 1
                continue
            self.conn.execute(
                "INSERT INTO dead_letters(upload_id, agent_uid, n_logs, nbytes, created_at,"
                " failed_at, status, detail, payload) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id.bytes,
                    item.agent_uid,
                    nbytes,
                    found[min(item.group, len(found) - 1)][0],
                    now,
                    item.status,
                    detail,
                    payload,
                ),
            )
            kept += 1
            added_bytes += nbytes
        n_logs = self._delete_upload(batch_id.bytes)
        if dead:
            self._add(
                dead_bytes=added_bytes,
                dead_logs=kept,
                dead_letter_total=len(dead),
                dead_letter_dropped=lost,
                dead_letter_batches=1,
            )
        return Settled(n_logs - len(dead), kept, lost)

    # ---- after the commit ------------------------------------------------------------------

    def stats(self) -> BufferStats:
        if not self._oldest_known:
            head = query(self.conn, "SELECT created_at FROM rows ORDER BY rowid LIMIT 1")
            self._oldest = float(head[0][0]) if head else None
            self._oldest_known = True
        t = self.totals
        return BufferStats(
            queue_depth=t["queue_logs"],
            queue_rows=t["queue_rows"],
            queue_bytes=t["queue_bytes"],
            dead_bytes=t["dead_bytes"],
            max_bytes=self.max_bytes,
            dropped_total=t["dropped_total"],
            dead_letter_total=t["dead_letter_total"],
            dead_letter_batches=t["dead_letter_batches"],
            oldest_created_at=self._oldest,
            dead_logs=t["dead_logs"],
            dead_max_bytes=self.dead_letter_max_bytes,
            dead_letter_dropped=t["dead_letter_dropped"],
        )

    def reclaim_space(self) -> None:
        """Give disk space back once the queue is empty (outside any transaction)."""
        if self.totals["queue_rows"]:
            return
        free = query(self.conn, "PRAGMA freelist_count")[0][0]
        if free >= VACUUM_MIN_FREE_PAGES:
            query(self.conn, "PRAGMA incremental_vacuum")
            query(self.conn, "PRAGMA wal_checkpoint(TRUNCATE)")

    # ---- internals -------------------------------------------------------------------------

    def _used(self) -> int:
        return self.totals["queue_bytes"]

    def add_totals(self, **deltas: int) -> None:
        """Change running totals in the open transaction (saved at commit)."""
        self._add(**deltas)

    def _add(self, **deltas: int) -> None:
        for name, delta in deltas.items():
            self.totals[name] += delta
        self._totals_changed = True
        if deltas.get("queue_rows", 0) < 0:
            self._oldest_known = False

    def _drop_oldest(self, fx: TxEffects, excess: int) -> None:
        # Whole upload batches go together: a batch id must always name the same rows.
        while excess > 0:
            head = query(
                self.conn,
                "SELECT rowid, upload_id, n_logs, nbytes FROM rows ORDER BY rowid LIMIT 1",
            )
            if not head:
                raise AssertionError("buffer totals disagree with its rows")
            rowid, upload_id, n_logs, nbytes = head[0]
            if upload_id is not None:
                freed_logs, freed = self._delete_upload_sized(upload_id)
                fx.dropped_uploads.add(uuid.UUID(bytes=upload_id))
            else:
                self.conn.execute("DELETE FROM rows WHERE rowid = ?", (rowid,))
                self._add(queue_logs=-n_logs, queue_rows=-1, queue_bytes=-nbytes)
                freed_logs, freed = n_logs, nbytes
            self._add(dropped_total=freed_logs)
            excess -= freed

    def _delete_upload(self, upload_id: bytes) -> int:
        return self._delete_upload_sized(upload_id)[0]

    def _delete_upload_sized(self, upload_id: bytes) -> tuple[int, int]:
        n_rows, n_logs, nbytes = query(
            self.conn,
            "SELECT COUNT(*), COALESCE(SUM(n_logs), 0), COALESCE(SUM(nbytes), 0)"
            " FROM rows WHERE upload_id = ?",
            (upload_id,),
        )[0]
        self.conn.execute("DELETE FROM rows WHERE upload_id = ?", (upload_id,))
        self.conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        self.claimed.discard(upload_id)
        self._add(queue_logs=-n_logs, queue_rows=-n_rows, queue_bytes=-nbytes)
        return int(n_logs), int(nbytes)

    def _load_claim(self, upload_id: bytes, created_at: float) -> Claim:
        rows = query(
            self.conn,
            "SELECT agent_uid, n_logs, nbytes, payload, trace_context FROM rows"
            " WHERE upload_id = ? ORDER BY rowid",
            (upload_id,),
        )
        return Claim(
            batch_id=uuid.UUID(bytes=upload_id),
            created_at=_utc(created_at),
            groups=[(row[0], row[3]) for row in rows],
            n_logs=sum(row[1] for row in rows),
            nbytes=sum(row[2] for row in rows),
            trace_contexts=[row[4] for row in rows],
        )

    def _read_totals(self) -> dict[str, int]:
        row = query(self.conn, _READ_TOTALS)[0]
        return {name: int(value) for name, value in zip(TOTALS, row, strict=True)}

    def _read_data_version(self) -> int:
        return int(query(self.conn, "PRAGMA data_version")[0][0])

    def _add_missing_row_columns(self) -> None:
        """Files written before a column of `rows` existed get it (NULL in the rows they hold)."""
        present = {row[1] for row in query(self.conn, "PRAGMA table_info(rows)")}
        if "trace_context" not in present:
            # Added after `payload` in such files; every statement names its columns.
            self.conn.execute("ALTER TABLE rows ADD COLUMN trace_context BLOB")

    def _add_missing_totals(self) -> None:
        """Files written before a total existed get its column, computed from the rows."""
        present = {row[1] for row in query(self.conn, "PRAGMA table_info(totals)")}
        for name in TOTALS:
            if name not in present:
                self.conn.execute(
                    f"ALTER TABLE totals ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0"
                )
        if "dead_logs" not in present:
            self.conn.execute(
                "UPDATE totals SET dead_logs = (SELECT COALESCE(SUM(n_logs), 0) FROM dead_letters)"
            )


def unpack(packed: bytes) -> bytes:
    """The msgpack bytes of a row's `list[Log]` (rows hold them zstd-compressed)."""
    return zstandard.ZstdDecompressor().decompress(packed)


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)
