from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import apsw
import msgspec
import pytest
import trio
import trio.testing
import zstandard

from gateway import dead_letters
from gateway.buffer import BUFFER_FILE, Buffer
from gateway.buffer_store import ROW_OVERHEAD, BufferStore, Claim, DeadLog, Settled, unpack
from gateway.errors import BufferFull, BufferTooLarge, StorageError
from gateway.sqlite import query
from protocol import codec
from protocol.agent import Log
from tests.gateway.helpers import make_config, make_logs, running_gateway, varied_logs

LogList = msgspec.msgpack.Decoder(list[Log])


@asynccontextmanager
async def open_buffer(path: Path, **options: Any) -> AsyncIterator[Buffer]:
    options.setdefault("max_bytes", 1 << 30)
    buffer = Buffer(path, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(buffer.run)
        yield buffer
        nursery.cancel_scope.cancel()


def row_size(agent_uid: str, logs: list[Log]) -> int:
    packed = zstandard.ZstdCompressor(level=1).compress(codec.msgpack_encoder.encode(logs))
    return len(packed) + len(agent_uid) + ROW_OVERHEAD


@pytest.mark.trio
async def test_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    async with open_buffer(tmp_path) as buffer:
        before = buffer.transactions
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(buffer.append, f"agent-{i % 7}", make_logs(10))
        assert buffer.stats is not None
        assert buffer.stats.queue_depth == 2000
        assert buffer.transactions - before < 200


@pytest.mark.trio
async def test_logs_come_back_oldest_first_and_leave_only_after_ack(tmp_path: Path) -> None:
    first, second = make_logs(3), make_logs(4)
    async with open_buffer(tmp_path) as buffer:
        await buffer.append("a", first)
        await buffer.append("b", second)
        claim = await buffer.claim(max_logs=100)
        assert claim is not None
        assert [uid for uid, _ in claim.groups] == ["a", "b"]
        assert LogList.decode(unpack(claim.groups[0][1])) == first
        assert LogList.decode(unpack(claim.groups[1][1])) == second
        assert await buffer.claim(max_logs=100) is None  # in flight: not handed out twice
        assert buffer.stats is not None and buffer.stats.queue_depth == 7
        assert await buffer.ack(claim.batch_id) == 7
        assert buffer.stats.queue_depth == 0
        assert buffer.stats.queue_bytes == 0


@pytest.mark.trio
async def test_batches_respect_max_logs_but_never_split_a_request(tmp_path: Path) -> None:
    async with open_buffer(tmp_path) as buffer:
        for _ in range(5):
            await buffer.append("a", make_logs(40))
        sizes = []
        while (claim := await buffer.claim(max_logs=100)) is not None:
            sizes.append(claim.n_logs)
            await buffer.ack(claim.batch_id)
        assert sizes == [80, 80, 40]


@pytest.mark.trio
async def test_a_claimed_batch_keeps_its_id_and_rows_across_a_restart(tmp_path: Path) -> None:
    async with open_buffer(tmp_path) as buffer:
        await buffer.append("a", make_logs(5))
        claim = await buffer.claim(max_logs=100)
        assert claim is not None
        await buffer.append("a", make_logs(5))  # arrives after the batch was formed
    async with open_buffer(tmp_path) as buffer:
        again = await buffer.claim(max_logs=100)
        assert again is not None
        assert again.batch_id == claim.batch_id
        assert again.groups == claim.groups
        assert again.created_at == claim.created_at
        later = await buffer.claim(max_logs=100)
        assert later is not None and later.n_logs == 5


@pytest.mark.trio
async def test_drop_oldest_keeps_under_the_cap_and_counts_the_dropped_logs(
    tmp_path: Path,
) -> None:
    logs = make_logs(50)
    size = row_size("agent", logs)
    cap = size * 10 + size // 2
    async with open_buffer(tmp_path, max_bytes=cap, overflow="drop_oldest") as buffer:
        for _ in range(25):
            await buffer.append("agent", logs)
            assert buffer.stats is not None
            assert buffer.stats.queue_bytes <= cap
        assert buffer.stats is not None
        assert buffer.stats.queue_depth == 10 * 50
        assert buffer.stats.dropped_total == 15 * 50


@pytest.mark.trio
async def test_drop_oldest_drops_a_formed_batch_whole(tmp_path: Path) -> None:
    logs = make_logs(50)
    size = row_size("agent", logs)
    async with open_buffer(tmp_path, max_bytes=size * 3, overflow="drop_oldest") as buffer:
        for _ in range(3):
            await buffer.append("agent", logs)
        claim = await buffer.claim(max_logs=100)  # the two oldest rows
        assert claim is not None and claim.n_logs == 100
        await buffer.append("agent", logs)
        assert not buffer.still_claimed(claim.batch_id)
        assert buffer.stats is not None
        assert buffer.stats.dropped_total == 100
        assert buffer.stats.queue_depth == 100
        assert await buffer.ack(claim.batch_id) == 0


@pytest.mark.trio
async def test_a_batch_dropped_before_its_claimer_resumes_is_not_sent(tmp_path: Path) -> None:
    # The claim and an append that drops the claimed batch commit together (one group
    # commit), before the claiming task runs again: the batch must not count as in flight,
    # or the uploader would send logs the buffer already counted as dropped.
    logs = make_logs(50)
    size = row_size("agent", logs)
    async with open_buffer(tmp_path, max_bytes=size * 3, overflow="drop_oldest") as buffer:
        for _ in range(2):
            await buffer.append("agent", logs)
        claims: list[Claim | None] = []

        async def claim() -> None:
            claims.append(await buffer.claim(max_logs=100))

        # Another connection holds the write lock, so the writer waits inside its first
        # transaction while the claim and then the append queue up behind it, in that order.
        blocker = apsw.Connection(str(buffer.path))
        blocker.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(buffer.append, "agent", logs)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(claim)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(buffer.append, "agent", logs)
            await trio.testing.wait_all_tasks_blocked()
            transactions = buffer.transactions
            blocker.execute("COMMIT")
        blocker.close()
        assert buffer.transactions == transactions + 2  # the claim and the append together
        claimed = claims[0]
        assert claimed is not None and claimed.n_logs == 100
        assert buffer.stats is not None and buffer.stats.dropped_total == 100
        assert not buffer.still_claimed(claimed.batch_id)


@pytest.mark.trio
async def test_reject_mode_refuses_when_full_and_keeps_what_it_has(tmp_path: Path) -> None:
    logs = make_logs(50)
    size = row_size("agent", logs)
    async with open_buffer(tmp_path, max_bytes=size * 2, overflow="reject") as buffer:
        await buffer.append("agent", logs)
        await buffer.append("agent", logs)
        with pytest.raises(BufferFull):
            await buffer.append("agent", logs)
        assert buffer.stats is not None
        assert buffer.stats.queue_depth == 100
        assert buffer.stats.dropped_total == 0
        claim = await buffer.claim(max_logs=50)
        assert claim is not None
        await buffer.ack(claim.batch_id)
        await buffer.append("agent", logs)  # room again


@pytest.mark.trio
async def test_a_request_bigger_than_the_whole_cap_is_refused(tmp_path: Path) -> None:
    async with open_buffer(tmp_path, max_bytes=8 * 1024) as buffer:
        with pytest.raises(BufferTooLarge):
            await buffer.append("agent", varied_logs(1000))


def dead_logs(claim: Claim, *positions: tuple[int, int]) -> list[DeadLog]:
    """The logs at (group, index) of `claim`, refused with a 400."""
    refused = []
    for group, index in positions:
        uid, packed = claim.groups[group]
        one = LogList.decode(unpack(packed))[index]
        refused.append(
            DeadLog(group, uid, codec.msgpack_encoder.encode([one]), 400, f"bad log {one.id}")
        )
    return refused


@pytest.mark.trio
async def test_settle_keeps_only_the_refused_logs_as_dead_letters(tmp_path: Path) -> None:
    async with open_buffer(tmp_path) as buffer:
        await buffer.append("a", make_logs(5))
        await buffer.append("b", make_logs(4))
        claim = await buffer.claim(max_logs=100)
        await buffer.append("a", make_logs(3))
        assert claim is not None
        settled = await buffer.settle(claim.batch_id, dead_logs(claim, (0, 2), (1, 3)))
        assert settled == Settled(uploaded=7, dead_lettered=2, dead_letter_dropped=0)
        assert buffer.stats is not None
        assert buffer.stats.dead_letter_total == 2
        assert buffer.stats.dead_logs == 2
        assert buffer.stats.dead_letter_batches == 1
        assert buffer.stats.queue_depth == 3
        nxt = await buffer.claim(max_logs=100)
        assert nxt is not None and nxt.n_logs == 3
    async with open_buffer(tmp_path) as buffer:  # totals survive a restart
        assert buffer.stats is not None
        assert buffer.stats.dead_logs == 2
        assert buffer.stats.queue_depth == 3


@pytest.mark.trio
async def test_dead_letters_are_never_evicted_by_the_byte_cap(tmp_path: Path) -> None:
    logs = make_logs(50)
    size = row_size("agent", logs)
    async with open_buffer(tmp_path, max_bytes=size * 3, overflow="drop_oldest") as buffer:
        await buffer.append("agent", logs)
        claim = await buffer.claim(max_logs=50)
        assert claim is not None
        await buffer.settle(claim.batch_id, dead_logs(claim, *((0, i) for i in range(50))))
        for _ in range(20):  # far more than the cap holds: the ring drops queued rows only
            await buffer.append("agent", logs)
        assert buffer.stats is not None
        assert buffer.stats.queue_depth == 3 * 50
        assert buffer.stats.dropped_total == 17 * 50
        assert buffer.stats.dead_logs == 50
        assert buffer.stats.queue_bytes <= size * 3


@pytest.mark.trio
async def test_past_their_own_cap_refused_logs_are_counted_not_kept(tmp_path: Path) -> None:
    async with open_buffer(tmp_path, dead_letter_max_bytes=64 * 1024) as buffer:
        await buffer.append("agent", varied_logs(1000))
        claim = await buffer.claim(max_logs=1000)
        assert claim is not None
        settled = await buffer.settle(
            claim.batch_id, dead_logs(claim, *((0, i) for i in range(1000)))
        )
        assert settled.dead_lettered + settled.dead_letter_dropped == 1000
        assert 0 < settled.dead_lettered < 1000
        assert buffer.stats is not None
        assert buffer.stats.dead_bytes <= 64 * 1024
        assert buffer.stats.dead_letter_dropped == settled.dead_letter_dropped
        assert buffer.stats.dead_logs == settled.dead_lettered


@pytest.mark.trio
async def test_a_corrupt_file_is_moved_aside_and_a_fresh_buffer_used(tmp_path: Path) -> None:
    (tmp_path / BUFFER_FILE).write_bytes(os.urandom(64 * 1024))
    async with open_buffer(tmp_path) as buffer:
        assert len(buffer.corrupt_moved_to) == 1
        assert buffer.corrupt_files == buffer.corrupt_moved_to
        await buffer.append("a", make_logs(2))
        assert buffer.stats is not None and buffer.stats.queue_depth == 2
    async with open_buffer(tmp_path) as buffer:  # still reported after a clean restart
        assert len(buffer.corrupt_files) == 1
        assert buffer.stats is not None and buffer.stats.queue_depth == 2


@pytest.mark.trio
async def test_disk_space_comes_back_after_a_drain(tmp_path: Path) -> None:
    def on_disk() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob(BUFFER_FILE + "*"))

    async with open_buffer(tmp_path) as buffer:
        for _ in range(300):
            await buffer.append("agent", make_logs(100, kind="activity"))
        full = on_disk()
        while (claim := await buffer.claim(max_logs=5000)) is not None:
            await buffer.ack(claim.batch_id)
        assert on_disk() < full / 4


@pytest.mark.trio
async def test_concurrent_claims_never_share_a_batch(tmp_path: Path) -> None:
    async with open_buffer(tmp_path) as buffer:
        for _ in range(6):
            await buffer.append("a", make_logs(10))
        claims = []

        async def claim_one() -> None:
            claims.append(await buffer.claim(max_logs=10))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(claim_one)
        found = [claim.batch_id for claim in claims if claim is not None]
        assert len(found) == 6
        assert len(set(found)) == 6


@pytest.mark.trio
async def test_corruption_found_while_running_starts_a_fresh_file(tmp_path: Path) -> None:
    async with open_buffer(tmp_path) as buffer:
        for _ in range(200):
            await buffer.append("a", varied_logs(100))
        store = buffer._store
        assert store is not None

        def to_disk_and_uncached() -> None:
            # Every page in the main file and none in memory, so damage there is seen.
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            store.conn.execute("PRAGMA cache_size=0").fetchall()

        def damage() -> None:
            size = (tmp_path / BUFFER_FILE).stat().st_size
            with open(tmp_path / BUFFER_FILE, "r+b") as file:
                file.seek(size // 2)
                file.write(os.urandom(size // 4))

        await trio.to_thread.run_sync(to_disk_and_uncached)
        await trio.to_thread.run_sync(damage)

        failures = 0
        for _ in range(3):  # the damage surfaces at the first operation that reads it
            try:
                while (claim := await buffer.claim(max_logs=5000)) is not None:
                    await buffer.ack(claim.batch_id)
            except StorageError:
                failures += 1
        assert failures == 1
        assert len(buffer.corrupt_files) == 1
        await buffer.append("a", make_logs(7))
        assert buffer.stats is not None and buffer.stats.queue_depth == 7


@pytest.mark.trio
@pytest.mark.parametrize(("setting", "synchronous"), [(None, 2), ("normal", 1)])
async def test_durability_is_full_unless_normal_is_chosen(
    tmp_path: Path, setting: str | None, synchronous: int
) -> None:
    # SQLite's `synchronous` belongs to the connection, so it is read on the gateway's own
    # connection to its buffer file: 2 (FULL) fsyncs the WAL at every commit, 1 (NORMAL)
    # only at checkpoints.
    overrides = {} if setting is None else {"durability": setting}
    config = make_config(tmp_path, **overrides)
    async with running_gateway(config) as (gateway, _):
        store = gateway.buffer._store
        assert store is not None
        assert gateway.buffer.path == tmp_path / BUFFER_FILE
        assert query(store.conn, "PRAGMA synchronous") == [(synchronous,)]
        assert query(store.conn, "PRAGMA journal_mode") == [("wal",)]
        await gateway.append("agent", make_logs(3))
        assert gateway.health().queue_depth == 3


@pytest.mark.trio
async def test_a_replay_from_another_connection_is_seen_by_the_running_buffer(
    tmp_path: Path,
) -> None:
    async with open_buffer(tmp_path) as buffer:
        await buffer.append("agent", make_logs(4))
        claim = await buffer.claim(max_logs=100)
        assert claim is not None
        await buffer.settle(claim.batch_id, dead_logs(claim, (0, 1), (0, 3)))
        assert buffer.stats is not None and buffer.stats.dead_logs == 2

        def replay_elsewhere() -> tuple[int, int]:
            # What `td-gateway dead-letters replay --all` does while the gateway runs.
            other = BufferStore(
                str(buffer.path), max_bytes=1 << 30, overflow="drop_oldest", durability="full"
            )
            try:
                return dead_letters.replay(other, None)
            finally:
                other.close()

        assert await trio.to_thread.run_sync(replay_elsewhere) == (2, 2)
        again = await buffer.claim(max_logs=100)  # the running buffer re-reads its totals
        assert again is not None and again.n_logs == 2
        original = LogList.decode(unpack(claim.groups[0][1]))
        replayed = [log for _, packed in again.groups for log in LogList.decode(unpack(packed))]
        assert replayed == [original[1], original[3]]
        assert buffer.stats is not None
        assert buffer.stats.dead_logs == 0
        assert buffer.stats.dead_bytes == 0
        assert buffer.stats.queue_depth == 2
        await buffer.ack(again.batch_id)
        assert buffer.stats.queue_depth == 0
        assert buffer.stats.queue_bytes == 0
