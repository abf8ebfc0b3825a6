"""The seeded fault schedule and what each fault does to the running stack.

    gateway_kill       SIGKILL `td-gateway`, stay down a moment, start it on the same data dir
    backend_kill       SIGKILL `td-backend serve` (its whole process group), start it again
    postgres_restart   pg_ctl stop (`fast`, or `immediate` = crash and recovery), start again
    db_terminate       pg_terminate_backend on every connection to the `td` database
    proxy_cut          reset every gateway→backend connection and refuse new ones a while
    proxy_stall        accept gateway→backend connections but move no bytes a while

The same seed gives the same schedule: the order of the faults, when each starts, and how
long each lasts. Faults run one after another; when one takes longer than its slot (a backend
start), the next starts late rather than on top of it, and agents post until the last fault
is over.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import msgspec
import trio

from chaos.postgres import StopMode
from chaos.proxy import FaultyProxy
from chaos.stack import Stack

KINDS = (
    "gateway_kill",
    "backend_kill",
    "postgres_restart",
    "db_terminate",
    "proxy_cut",
    "proxy_stall",
)
# Ranges a seeded fault draws its length from (seconds of downtime, cut or stall).
DOWN_S = (0.2, 3.0)
PROXY_S = (1.0, 8.0)
# Quiet time at the start (agents register) and at the end (before the drain).
# On a busy machine a start takes longer than the tests' default patience.
RESTART_WITHIN_S = 60.0
LEAD_IN_FRACTION = 0.1
LEAD_OUT_FRACTION = 0.1


class FaultFailed(RuntimeError):
    """The stack did not come back from a fault (a restart failed): the run cannot go on."""


class Fault(msgspec.Struct, kw_only=True):
    at_s: float
    kind: str
    length_s: float
    mode: str = ""


class FaultRecord(msgspec.Struct, kw_only=True):
    kind: str
    started_s: float
    took_s: float
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


def schedule(seed: int, duration_s: float, each: dict[str, int]) -> list[Fault]:
    """`each[kind]` faults of every kind, shuffled and spread evenly over the run."""
    rng = random.Random(seed)
    kinds = [kind for kind in KINDS for _ in range(each.get(kind, 0))]
    rng.shuffle(kinds)
    if not kinds:
        return []
    start = duration_s * LEAD_IN_FRACTION
    span = duration_s * (1 - LEAD_IN_FRACTION - LEAD_OUT_FRACTION)
    slot = span / len(kinds)
    faults = []
    for index, kind in enumerate(kinds):
        at_s = start + slot * index + rng.uniform(0, slot * 0.3)
        low, high = PROXY_S if kind.startswith("proxy") else DOWN_S
        mode = rng.choice(("fast", "immediate")) if kind == "postgres_restart" else ""
        faults.append(
            Fault(
                at_s=round(at_s, 2), kind=kind, length_s=round(rng.uniform(low, high), 2), mode=mode
            )
        )
    return faults


class Injector:
    """Runs a schedule against a stack; `records` says what was done and how long it took."""

    def __init__(self, stack: Stack, proxy: FaultyProxy) -> None:
        self.stack = stack
        self.proxy = proxy
        self.records: list[FaultRecord] = []

    def counts(self) -> dict[str, int]:
        done = Counter(record.kind for record in self.records)
        return {kind: done[kind] for kind in KINDS}

    async def run(self, faults: list[Fault], started_at: float, done: trio.Event) -> None:
        """Every fault of the schedule, then `done`."""
        for fault in faults:
            await trio.sleep_until(started_at + fault.at_s)
            began = trio.current_time()
            try:
                detail = await self.inject(fault)
            except Exception as exc:
                at = round(began - started_at, 2)
                raise FaultFailed(f"{fault.kind} at {at} s did not recover: {exc}") from exc
            self.records.append(
                FaultRecord(
                    kind=fault.kind,
                    started_s=round(began - started_at, 2),
                    took_s=round(trio.current_time() - began, 2),
                    detail=detail,
                )
            )
        done.set()

    async def inject(self, fault: Fault) -> dict[str, Any]:
        match fault.kind:
            case "gateway_kill":
                gateway = self.stack.gateway
                assert gateway is not None
                await trio.to_thread.run_sync(gateway.kill)
                await trio.sleep(fault.length_s)
                await trio.to_thread.run_sync(gateway.start, RESTART_WITHIN_S)
                return {"down_s": fault.length_s}
            case "backend_kill":
                backend = self.stack.backend
                assert backend is not None
                await trio.to_thread.run_sync(backend.kill)
                await trio.sleep(fault.length_s)
                await trio.to_thread.run_sync(backend.start)
                return {"down_s": fault.length_s}
            case "postgres_restart":
                postgres = self.stack.postgres
                mode: StopMode = "immediate" if fault.mode == "immediate" else "fast"
                await trio.to_thread.run_sync(postgres.stop_now, mode)
                await trio.sleep(fault.length_s)
                await trio.to_thread.run_sync(postgres.start_again)
                return {"mode": fault.mode, "down_s": fault.length_s}
            case "db_terminate":
                postgres = self.stack.postgres
                terminated = await trio.to_thread.run_sync(postgres.terminate_connections)
                return {"connections": terminated}
            case "proxy_cut":
                reset = await self.proxy.cut(fault.length_s)
                return {"refused_s": fault.length_s, "connections_reset": reset}
            case "proxy_stall":
                await self.proxy.stall(fault.length_s)
                return {"stalled_s": fault.length_s}
        raise ValueError(f"unknown fault kind {fault.kind!r}")
