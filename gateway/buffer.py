"""The durable ring buffer between agents and the uplink, with group commit.

One writer task owns the SQLite connection. Callers hand it operations over a memory
channel; it takes every operation waiting, runs them in ONE transaction in a worker thread
(APSW calls block), commits, and only then wakes each caller. So `append` returns after the
logs are on disk, and a hundred concurrent requests cost one fsync, not a hundred.

Durability `full` (the default) makes SQLite fsync the WAL at every commit, so a 202 means
the logs are on stable storage; group commit keeps that to one fsync per burst. `normal`
skips the fsync: it survives a crash of the process, not a power cut.

A buffer file SQLite cannot read, at start or later, is renamed aside with a timestamp (kept
for salvage) and a fresh one is used; such files are listed by `corrupt_files` (and so in
/health) until an operator removes them. A full disk fails the commit with StorageFull (the
agent API answers 503 + Retry-After) and is reported in `storage_problem` until a commit
that adds logs succeeds again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import apsw
import structlog
import trio

from gateway import tracing
from gateway.buffer_store import (
    DEAD_LETTER_MAX_BYTES,
    BufferStats,
    BufferStore,
    Claim,
    DeadLog,
    Settled,
    TxEffects,
)
from gateway.errors import GatewayError, StorageError, StorageFull
from protocol import codec
from protocol.agent import Log

T = TypeVar("T")
log = structlog.get_logger("gateway.buffer")

BUFFER_FILE = "buffer.db"
# How many waiting operations one transaction takes at most; bounds a commit's latency.
MAX_OPS_PER_TRANSACTION = 1024


@dataclass(eq=False)
class _Op(Generic[T]):
    run: Callable[[BufferStore, TxEffects], T]
    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


class Buffer:
    """Start `run` in a nursery (`await nursery.start(buffer.run)`), then call the methods."""

    def __init__(
        self,
        data_dir: Path,
        *,
        max_bytes: int,
        overflow: Literal["drop_oldest", "reject"] = "drop_oldest",
        durability: Literal["normal", "full"] = "full",
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> None:
        self.path = data_dir / BUFFER_FILE
        self._max_bytes = max_bytes
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self._overflow: Literal["drop_oldest", "reject"] = overflow
        self._durability: Literal["normal", "full"] = durability
        self._send, self._receive = trio.open_memory_channel[_Op[Any]](math.inf)
        self._limiter = trio.CapacityLimiter(1)
        self._store: BufferStore | None = None
        self._in_flight: set[uuid.UUID] = set()
        self._appended = trio.Event()
        self._changed = trio.Event()
        self.stats: BufferStats | None = None
        self.transactions = 0
        self.corrupt_moved_to: list[str] = []
        # Why the last commit failed (e.g. the disk is full), until one that adds logs succeeds.
        self.storage_problem: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        store = await trio.to_thread.run_sync(self._open, limiter=self._limiter)
        self._store = store
        self.stats = await trio.to_thread.run_sync(store.stats, limiter=self._limiter)
        try:
            task_status.started()
            await self._write_forever()
        finally:
            current, self._store = self._store, None
            # Not cancellable: waits for no transaction (the writer is not in one here).
            if current is not None:
                current.close()

    def _open(self) -> BufferStore:
        try:
            return self._open_store()
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            return self._start_over(str(exc))

    def _start_over(self, error: str) -> BufferStore:
        """Move the unreadable file aside (kept for salvage) and open a fresh one."""
        moved = self._move_aside()
        self.corrupt_moved_to.append(str(moved))
        log.error(
            "buffer_corrupt_moved_aside", path=str(self.path), moved_to=str(moved), error=error
        )
        return self._open_store()

    def _replace_corrupt(self, store: BufferStore) -> tuple[BufferStore, BufferStats]:
        with contextlib.suppress(apsw.Error):
            store.close()
        fresh = self._start_over("corruption found while running")
        return fresh, fresh.stats()

    def _open_store(self) -> BufferStore:
        try:
            store = BufferStore(
                str(self.path),
                max_bytes=self._max_bytes,
                overflow=self._overflow,
                durability=self._durability,
                dead_letter_max_bytes=self._dead_letter_max_bytes,
            )
            # Reading the head and the totals touches the pages a damaged file breaks first,
            # without a full integrity check whose cost would grow with the backlog.
            store.stats()
            return store
        except (apsw.CorruptError, apsw.NotADBError):
            raise
        except apsw.Error as exc:
            raise StorageError(f"cannot open the buffer at {self.path}: {exc}") from exc

    def _move_aside(self) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                os.replace(source, Path(str(target) + suffix))
        return target

    @property
    def corrupt_files(self) -> list[str]:
        """Buffer files found unreadable, this start or earlier ones (until an operator
        deletes them)."""
        return sorted(str(p) for p in self.path.parent.glob(f"{BUFFER_FILE}.corrupt-*[0-9Z]"))

    # ---- the writer ------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        async for first in self._receive:
            store = self._store
            assert store is not None
            ops = [first]
            while len(ops) < MAX_OPS_PER_TRANSACTION:
                try:
                    ops.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            # A cancelled thread call still finishes its transaction: nothing is half-written.
            fx, stats = await trio.to_thread.run_sync(
                self._transact, store, ops, limiter=self._limiter
            )
            if fx.corrupt:
                # Never wedged: these ops fail (their callers got no 202), the next ones land
                # in a fresh file; batches claimed from the old one are gone with it.
                self._store, stats = await trio.to_thread.run_sync(
                    self._replace_corrupt, store, limiter=self._limiter
                )
                self._in_flight.clear()
            if stats is not None:
                self.stats = stats
            if fx.failure is not None:
                self.storage_problem = fx.failure
            elif fx.appended:
                self.storage_problem = None
            self.transactions += 1
            self._in_flight |= fx.claimed_uploads
            self._in_flight -= fx.dropped_uploads
            if fx.appended:
                self._appended.set()
                self._appended = trio.Event()
            self._changed.set()
            self._changed = trio.Event()
            for op in ops:
                op.done.set()

    @staticmethod
    def _transact(
        store: BufferStore, ops: Sequence[_Op[Any]]
    ) -> tuple[TxEffects, BufferStats | None]:
        fx = TxEffects()
        try:
            saved = store.begin()
            try:
                for op in ops:
                    try:
                        op.result = op.run(store, fx)
                    except GatewayError as exc:  # refused before it wrote anything
                        op.error = exc
                store.commit()
            except BaseException:
                store.rollback(saved)
                raise
        except apsw.Error as exc:
            failure: StorageError
            if isinstance(exc, apsw.FullError):
                failure = StorageFull(
                    "no space left for the buffer on the data directory's file system"
                    f" (SQLite: {exc}); free space there"
                )
            else:
                failure = StorageError(f"the buffer could not commit: {exc}")
            for op in ops:
                op.error = failure
            log.error("buffer_commit_failed", error=str(exc))
            corrupt = isinstance(exc, (apsw.CorruptError, apsw.NotADBError))
            fx = TxEffects(corrupt=corrupt, failure=str(failure))
            try:
                return fx, store.stats()
            except apsw.Error:
                return fx, None
        try:
            store.reclaim_space()
        except apsw.Error as exc:  # space comes back on the next drain instead
            log.warning("buffer_reclaim_failed", error=str(exc))
        return fx, store.stats()

    async def _submit(self, run: Callable[[BufferStore, TxEffects], T]) -> T:
        if self._store is None:
            raise StorageError("the buffer is not running")
        op = _Op(run)
        await self._send.send(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]

    # ---- what the rest of the gateway calls ------------------------------------------------

    async def append(self, agent_uid: str, logs: list[Log]) -> None:
        """Store `logs` as sent by `agent_uid`; returns once they are committed.

        Raises BufferFull (reject mode, at the cap), BufferTooLarge, StorageError.
        """
        if logs:
            await self.append_encoded(agent_uid, len(logs), codec.msgpack_encoder.encode(logs))

    async def append_encoded(self, agent_uid: str, n_logs: int, payload: bytes) -> None:
        """Like `append`, with the logs already msgpack-encoded as a `list[Log]`.

        The current span (the agent's post) is stored with the logs: their upload links to it.
        """
        now = time.time()
        trace_context = tracing.current_packed()
        with tracing.span("buffer.commit", attributes={"td.logs": n_logs}):
            await self._submit(
                lambda store, fx: store.append(fx, agent_uid, n_logs, payload, now, trace_context)
            )

    def appended_event(self) -> trio.Event:
        """An event set by the next commit that adds rows; take it BEFORE calling `claim`."""
        return self._appended

    def change_event(self) -> trio.Event:
        """An event set by the next commit of any kind (figures in `stats` changed)."""
        return self._changed

    async def claim(self, max_logs: int) -> Claim | None:
        """The next upload batch (oldest first, never one already in flight), or None."""
        now = time.time()

        def claim(store: BufferStore, fx: TxEffects) -> Claim | None:
            found = store.claim(max_logs, now)
            if found is not None:
                fx.claimed_uploads.add(found.batch_id)
            return found

        return await self._submit(claim)

    def still_claimed(self, batch_id: uuid.UUID) -> bool:
        """False once drop_oldest removed the batch: there is nothing left to send."""
        return batch_id in self._in_flight

    async def ack(self, batch_id: uuid.UUID) -> int:
        try:
            return await self._submit(lambda store, fx: store.ack(batch_id))
        finally:
            self._in_flight.discard(batch_id)

    async def settle(self, batch_id: uuid.UUID, dead: list[DeadLog]) -> Settled:
        """Delete an uploaded batch in one commit, keeping its refused logs as dead letters."""
        now = time.time()
        try:
            return await self._submit(lambda store, fx: store.settle(batch_id, dead, now))
        finally:
            self._in_flight.discard(batch_id)
