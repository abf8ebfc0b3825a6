"""`td-gateway dead-letters list|show ID|replay ID|--all|drop ID|--all`: what an operator
does with the logs the backend refused.

Each dead letter is one refused log (older files may hold a whole refused request per
entry) with the backend's status and reason. `replay` puts entries back at the end of the
upload queue, so a backend fixed since sends them on; `drop` deletes them for good. Both
work on the buffer file directly, whether the gateway runs or not: SQLite serialises the
writes, and a running gateway re-reads its totals when another connection changed the file.
Output is JSON (one object per line for `list`), for people and scripts alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from gateway.buffer import BUFFER_FILE
from gateway.buffer_store import ROW_OVERHEAD, BufferStore, unpack
from gateway.sqlite import query
from protocol import codec
from protocol.agent import Log

DEFAULT_DATA_DIR = ".td-gateway"
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

_COLUMNS = "rowid, agent_uid, n_logs, nbytes, created_at, failed_at, status, detail"
_logs = msgspec.msgpack.Decoder(list[Log])


@dataclass(frozen=True)
class DeadLetter:
    id: int
    agent_uid: str
    n_logs: int
    bytes: int
    created_at: str
    failed_at: str
    status: int
    detail: str


def add_parser(commands: Any) -> None:
    """Declare `dead-letters` and its actions on the CLI's subcommands."""
    parser = commands.add_parser(
        "dead-letters", help="list, show, replay or drop logs the backend refused"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one JSON line per dead letter, oldest first")
    show = actions.add_parser("show", help="one dead letter with its logs")
    show.add_argument("id", type=int)
    changes = []
    for name, text in (
        ("replay", "queue dead letters for upload again"),
        ("drop", "delete dead letters for good"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", type=int, nargs="?")
        action.add_argument("--all", action="store_true", help="every dead letter")
        changes.append(action)
    for action in (listing, show, *changes):
        action.add_argument(
            "--data-dir",
            help=f"the gateway's data directory (TD_DATA_DIR; default {DEFAULT_DATA_DIR})",
        )


def run(args: argparse.Namespace) -> int:
    """Carry out the parsed `dead-letters` command; returns the exit code."""
    data_dir = Path(args.data_dir or os.environ.get("TD_DATA_DIR") or DEFAULT_DATA_DIR)
    path = data_dir / BUFFER_FILE
    if not path.exists():
        return _fail(f"no buffer at {path}; pass the gateway's --data-dir", EXIT_USAGE)
    if args.action in ("replay", "drop") and (args.id is None) == (not args.all):
        return _fail(f"{args.action}: give one dead letter ID or --all", EXIT_USAGE)
    store = BufferStore(str(path), max_bytes=1 << 62, overflow="drop_oldest", durability="full")
    try:
        if args.action == "list":
            for letter in list_letters(store):
                _print(letter)
            return 0
        if args.action == "show":
            found = show(store, args.id)
            if found is None:
                return _fail(f"no dead letter {args.id}", EXIT_NOT_FOUND)
            letter, logs = found
            _print({**dataclasses.asdict(letter), "logs": logs})
            return 0
        ids = None if args.all else [args.id]
        entries, n_logs = replay(store, ids) if args.action == "replay" else drop(store, ids)
        if ids is not None and not entries:
            return _fail(f"no dead letter {args.id}", EXIT_NOT_FOUND)
        done = "replayed" if args.action == "replay" else "dropped"
        _print({done: entries, "logs": n_logs})
        return 0
    finally:
        store.close()


def list_letters(store: BufferStore) -> list[DeadLetter]:
    rows = query(store.conn, f"SELECT {_COLUMNS} FROM dead_letters ORDER BY rowid")
    return [_letter(row) for row in rows]


def show(store: BufferStore, letter_id: int) -> tuple[DeadLetter, list[Any]] | None:
    """The dead letter and its logs (as JSON-ready values), or None."""
    rows = query(
        store.conn,
        f"SELECT {_COLUMNS}, payload FROM dead_letters WHERE rowid = ?",
        (letter_id,),
    )
    if not rows:
        return None
    logs = _logs.decode(unpack(rows[0][-1]))
    return _letter(rows[0][:-1]), msgspec.to_builtins(logs)


def replay(store: BufferStore, ids: Sequence[int] | None) -> tuple[int, int]:
    """Move dead letters (all with None) to the end of the upload queue; (entries, logs)."""
    saved = store.begin()
    try:
        rows = _select(store, "rowid, agent_uid, n_logs, nbytes, created_at, payload", ids)
        queued_bytes = 0
        for _, agent_uid, n_logs, _, created_at, payload in rows:
            nbytes = len(payload) + len(agent_uid) + ROW_OVERHEAD
            store.conn.execute(
                "INSERT INTO rows(agent_uid, n_logs, nbytes, created_at, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                (agent_uid, n_logs, nbytes, created_at, payload),
            )
            queued_bytes += nbytes
        n_logs = sum(row[2] for row in rows)
        _delete(store, rows)
        store.add_totals(
            queue_logs=n_logs,
            queue_rows=len(rows),
            queue_bytes=queued_bytes,
            dead_logs=-n_logs,
            dead_bytes=-sum(row[3] for row in rows),
        )
        store.commit()
    except BaseException:
        store.rollback(saved)
        raise
    return len(rows), n_logs


def drop(store: BufferStore, ids: Sequence[int] | None) -> tuple[int, int]:
    """Delete dead letters (all with None) for good; (entries, logs)."""
    saved = store.begin()
    try:
        rows = _select(store, "rowid, agent_uid, n_logs, nbytes", ids)
        n_logs = sum(row[2] for row in rows)
        _delete(store, rows)
        store.add_totals(dead_logs=-n_logs, dead_bytes=-sum(row[3] for row in rows))
        store.commit()
    except BaseException:
        store.rollback(saved)
        raise
    return len(rows), n_logs


def _select(store: BufferStore, columns: str, ids: Sequence[int] | None) -> list[tuple[Any, ...]]:
    if ids is None:
        return query(store.conn, f"SELECT {columns} FROM dead_letters ORDER BY rowid")
    rows: list[tuple[Any, ...]] = []
    for letter_id in ids:
        rows += query(
            store.conn, f"SELECT {columns} FROM dead_letters WHERE rowid = ?", (letter_id,)
        )
    return rows


def _delete(store: BufferStore, rows: list[tuple[Any, ...]]) -> None:
    for row in rows:
        store.conn.execute("DELETE FROM dead_letters WHERE rowid = ?", (row[0],))


def _letter(row: tuple[Any, ...]) -> DeadLetter:
    rowid, agent_uid, n_logs, nbytes, created_at, failed_at, status, detail = row
    return DeadLetter(
        id=int(rowid),
        agent_uid=agent_uid,
        n_logs=int(n_logs),
        bytes=int(nbytes),
        created_at=_iso(created_at),
        failed_at=_iso(failed_at),
        status=int(status),
        detail=detail,
    )


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()


def _print(value: Any) -> None:
    sys.stdout.write(codec.json_encoder.encode(value).decode() + "\n")


def _fail(message: str, code: int) -> int:
    print(f"td-gateway dead-letters: {message}", file=sys.stderr)
    return code
