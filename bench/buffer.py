"""Buffer benchmark: append then drain 200k logs in 100-log batches, the gateway's buffer vs
persist-queue's SQLiteAckQueue (one item per batch), both SQLite WAL at synchronous=NORMAL.

Append, the headline: 64 writers at once, each waiting for its own commit, as concurrent
agent requests do (the gateway's group commit; persist-queue from 64 threads). Sequential
appends (one writer) are reported too. Drain is "read the oldest, delete it once sent":
claim + ack (5,000 logs a batch) for the gateway; get + ack for persist-queue, with its acked
rows cleared every 5,000 logs as the gateway deletes them (left until the end, they make
every `get` scan past them and the drain quadratic). persist-queue runs with its documented
settings for this use: `multithreading=True` (a connection for puts and one for gets, many
threads), `auto_commit=True` (the only mode its ack queue supports: each put durable on
return), `clear_acked_data(max_delete=0, keep_latest=0)` (delete every acked row). Each
figure is the best of three rounds. The gateway stores rows zstd-compressed (part of its design);
persist-queue gets the same msgpack bytes uncompressed. The gateway's rounds run with the
interpreter settings `td-gateway run` uses (gateway.cli.tune_runtime), persist-queue's with
the defaults. Prints one JSON object.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import persistqueue
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.buffer import Buffer
from gateway.cli import tune_runtime
from protocol import codec
from tests.gateway.helpers import varied_logs

LOGS = 200_000
PER_BATCH = 100
BATCHES = LOGS // PER_BATCH
WRITERS = 64
PER_WRITER = BATCHES // WRITERS
ROUNDS = 3
# persist-queue's acked rows are cleared as often as the gateway deletes: every 5,000 logs.
CLEAR_EVERY_ITEMS = 5000 // PER_BATCH
DEFAULT_GC_THRESHOLD = gc.get_threshold()
DEFAULT_SWITCH_INTERVAL = sys.getswitchinterval()


async def _gateway_round(directory: Path, payload: bytes) -> dict[str, float]:
    buffer = Buffer(directory, max_bytes=1 << 34, durability="normal")
    async with trio.open_nursery() as nursery:
        await nursery.start(buffer.run)

        async def writer() -> None:
            for _ in range(PER_WRITER):
                await buffer.append_encoded("agent", PER_BATCH, payload)

        started = time.perf_counter()
        async with trio.open_nursery() as writers:
            for _ in range(WRITERS):
                writers.start_soon(writer)
        concurrent_s = time.perf_counter() - started
        drain_s = await _drain(buffer, WRITERS * PER_WRITER * PER_BATCH)

        started = time.perf_counter()
        for _ in range(BATCHES):
            await buffer.append_encoded("agent", PER_BATCH, payload)
        sequential_s = time.perf_counter() - started
        await _drain(buffer, LOGS)
        nursery.cancel_scope.cancel()
    return {
        "append": WRITERS * PER_WRITER * PER_BATCH / concurrent_s,
        "append_sequential": LOGS / sequential_s,
        "drain": WRITERS * PER_WRITER * PER_BATCH / drain_s,
    }


async def _drain(buffer: Buffer, expected: int) -> float:
    started = time.perf_counter()
    drained = 0
    while (claim := await buffer.claim(max_logs=5000)) is not None:
        drained += await buffer.ack(claim.batch_id)
    assert drained == expected, (drained, expected)
    return time.perf_counter() - started


def _persist_queue_round(directory: Path, payload: bytes) -> dict[str, float]:
    queue = persistqueue.SQLiteAckQueue(str(directory), auto_commit=True, multithreading=True)
    for conn in {id(queue._conn): queue._conn, id(queue._putter): queue._putter}.values():
        conn.execute("PRAGMA synchronous=NORMAL")

    def writer() -> None:
        for _ in range(PER_WRITER):
            queue.put(payload)

    concurrent_s = _timed(lambda: _in_threads(writer, WRITERS))
    drain_s = _timed(lambda: _drain_persist_queue(queue, WRITERS * PER_WRITER))

    def sequential() -> None:
        for _ in range(BATCHES):
            queue.put(payload)

    sequential_s = _timed(sequential)
    return {
        "append": WRITERS * PER_WRITER * PER_BATCH / concurrent_s,
        "append_sequential": LOGS / sequential_s,
        "drain": WRITERS * PER_WRITER * PER_BATCH / drain_s,
    }


def _drain_persist_queue(queue: persistqueue.SQLiteAckQueue, expected: int) -> None:
    drained = 0
    while queue.size:
        queue.ack(queue.get(block=False))
        drained += 1
        if drained % CLEAR_EVERY_ITEMS == 0:
            queue.clear_acked_data(max_delete=0, keep_latest=0)
    queue.clear_acked_data(max_delete=0, keep_latest=0)
    assert drained == expected
    assert queue.acked_count() == 0


def _in_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _best(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: max(r[key] for r in rounds) for key in rounds[0]}


def _default_runtime() -> None:
    gc.unfreeze()
    gc.set_threshold(*DEFAULT_GC_THRESHOLD)
    sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL)


def main() -> None:
    payload = codec.msgpack_encoder.encode(varied_logs(PER_BATCH))
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="td-bench-buffer-") as root:
        for n in range(ROUNDS):
            tune_runtime()  # as in a `td-gateway run` process
            ours.append(trio.run(_gateway_round, Path(root) / f"gateway-{n}", payload))
            _default_runtime()  # persist-queue gets the interpreter as it comes
            theirs.append(_persist_queue_round(Path(root) / f"persist-queue-{n}", payload))
    g, p = _best(ours), _best(theirs)
    print(
        json.dumps(
            {
                "logs": LOGS,
                "batch_logs": PER_BATCH,
                "writers": WRITERS,
                "synchronous": "NORMAL",
                "append_logs_per_s": round(g["append"]),
                "drain_logs_per_s": round(g["drain"]),
                "persist_queue_append_logs_per_s": round(p["append"]),
                "persist_queue_drain_logs_per_s": round(p["drain"]),
                "append_ratio_vs_persist_queue": round(g["append"] / p["append"], 2),
                "drain_ratio_vs_persist_queue": round(g["drain"] / p["drain"], 2),
                "sequential_append_logs_per_s": round(g["append_sequential"]),
                "persist_queue_sequential_append_logs_per_s": round(p["append_sequential"]),
                "sequential_append_ratio_vs_persist_queue": round(
                    g["append_sequential"] / p["append_sequential"], 2
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
