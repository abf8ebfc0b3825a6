"""One chaos run: agents post, the scheduler injects faults, an operator opens doors; then the
gateway drains and PostgreSQL and the terminal are held against what was acknowledged."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import msgspec
import trio

from chaos.agents import AgentStats, run_agent
from chaos.commands import Commander, command_report, door_executions
from chaos.faults import Fault, Injector
from chaos.proxy import FaultyProxy
from chaos.stack import DEVSIM_USER, Stack
from loadtests.headless import count_stored

# After the run's end an agent finishes the post in flight; past this it gives up on it.
AGENT_FINISH_S = 60.0
CONTROL_UP_S = 60.0


class Options(msgspec.Struct, frozen=True, kw_only=True):
    seed: int
    duration_s: float
    agents: int
    batch_size: int
    interval_s: float
    command_interval_s: float
    command_expires_s: float
    drain_timeout_s: float


async def chaos_run(stack: Stack, options: Options, faults: list[Fault]) -> dict[str, Any]:
    assert stack.backend is not None
    stats = AgentStats()
    async with trio.open_nursery() as services:
        proxy = FaultyProxy(upstream_port=stack.backend.port)
        await services.start(proxy.serve)
        stack.gateway = stack.new_gateway(f"http://127.0.0.1:{proxy.port}")
        await trio.to_thread.run_sync(stack.gateway.start)
        if not await _wait_for(stack.gateway_url, "control_connected", True, CONTROL_UP_S):
            raise RuntimeError(f"the gateway's control channel was not up in {CONTROL_UP_S:g} s")
        await trio.to_thread.run_sync(stack.add_device)

        injector = Injector(stack, proxy)
        commander = Commander(
            stack.backend.url,
            stack.backend.admin_token,
            stack.device_id,
            expires_in_s=options.command_expires_s,
        )
        stop, give_up = trio.Event(), trio.Event()
        started = trio.current_time()
        run_started = dt.datetime.now(dt.UTC)
        async with trio.open_nursery() as run:
            for number in range(options.agents):
                agent = functools.partial(
                    run_agent,
                    seed=options.seed,
                    batch_size=options.batch_size,
                    interval_s=options.interval_s,
                    give_up=give_up,
                )
                run.start_soon(agent, number, stack.gateway_url, stack.enrollment_key, stats, stop)
            faults_done = trio.Event()
            run.start_soon(injector.run, faults, started, faults_done)
            run.start_soon(commander.issue_until, stop, options.command_interval_s, stack.doors)
            # Posting lasts the duration, and longer if faults ran late: all of them run
            # while agents post.
            await trio.sleep_until(started + options.duration_s)
            await faults_done.wait()
            stop.set()
            services.start_soon(_set_later, give_up, AGENT_FINISH_S)
        # Agents, faults and commands have ended; no posts are in flight.
        give_up.set()
        posting_s = trio.current_time() - started

        drain_started = trio.current_time()
        drained = await _wait_for(stack.gateway_url, "queue_depth", 0, options.drain_timeout_s)
        drain_s = trio.current_time() - drain_started
        health = await _health(stack.gateway_url)
        commands = await commander.settle(options.command_expires_s + 30)
        executions = await door_executions(stack.devsim_port, DEVSIM_USER, stack.devsim_password)
        services.cancel_scope.cancel()

    counts = await trio.to_thread.run_sync(
        _count, stack.postgres.url, stats.acknowledged, f"device:{stack.device_id}"
    )
    acknowledged = len(set(stats.acknowledged))
    commands_out = command_report(commands, executions, run_started)
    commands_out["create_unanswered"] = commander.unanswered_creates
    commands_out["create_refused"] = dict(commander.refused_creates)
    report: dict[str, Any] = {
        "seed": options.seed,
        "duration_s": options.duration_s,
        "posting_s": round(posting_s, 1),
        "drain_s": round(drain_s, 1),
        "agents": options.agents,
        "acknowledged": acknowledged,
        "stored": counts["stored"],
        "lost": acknowledged - counts["stored"],
        "duplicates": counts["duplicates"],
        "acknowledged_per_s": round(acknowledged / posting_s, 1),
        "drained": drained,
        "faults": injector.counts(),
        "commands": commands_out,
        "device_events": counts["device_events"],
        "agents_seen": {
            "posts": stats.posts,
            "retries": stats.retries,
            "answers": dict(sorted(stats.answers.items())),
            "refused_batches": stats.refused_batches,
            "reregistered": stats.reregistered,
        },
        "gateway": {
            k: health.get(k)
            for k in ("queue_depth", "dropped_total", "dead_letter_total", "dead_letter_batches")
        },
        "fault_log": [msgspec.to_builtins(record) for record in injector.records],
    }
    report["ok"] = (
        report["lost"] == 0
        and report["duplicates"] == 0
        and drained
        and acknowledged == len(stats.acknowledged)
        and not commands_out["stuck"]
        and not commands_out["executed_twice"]
        and not commands_out["executed_unissued_doors"]
        and not commands_out["succeeded_without_execution"]
        and counts["device_events"]["duplicates"] == 0
    )
    return report


async def _set_later(event: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    event.set()


async def _health(gateway_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        answer: dict[str, Any] = (await client.get(f"{gateway_url}/health")).json()
        return answer


async def _wait_for(gateway_url: str, field: str, value: object, within_s: float) -> bool:
    """Poll the gateway's /health until `field` equals `value`; False past the deadline."""
    deadline = trio.current_time() + within_s
    while trio.current_time() < deadline:
        try:
            if (await _health(gateway_url)).get(field) == value:
                return True
        except httpx.HTTPError:
            pass
        await trio.sleep(0.25)
    return False


def _count(database_url: str, acknowledged: list[uuid.UUID], device_uid: str) -> dict[str, Any]:
    """Stored acknowledged ids, and duplicates as rows minus distinct ids over all of
    agent_logs (a log committed but never acknowledged must not be doubled either)."""
    stored, _ = asyncio.run(count_stored(database_url, sorted(set(acknowledged))))

    async def table_counts() -> dict[str, Any]:
        conn = await asyncpg.connect(database_url)
        try:
            everything = await conn.fetchrow(
                "SELECT count(*) AS total_rows, count(DISTINCT id) AS ids FROM agent_logs"
            )
            device = await conn.fetchrow(
                "SELECT count(*) AS total_rows, count(DISTINCT id) AS ids FROM agent_logs"
                " WHERE agent_uid = $1",
                device_uid,
            )
        finally:
            await conn.close()
        return {
            "duplicates": everything["total_rows"] - everything["ids"],
            "device_events": {
                "rows": device["total_rows"],
                "duplicates": device["total_rows"] - device["ids"],
            },
        }

    return {"stored": stored, **asyncio.run(table_counts())}
