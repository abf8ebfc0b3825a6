"""Shared helpers for gateway tests: configs on tmp_path, an in-process gateway on port 0,
log factories."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio

from gateway.app import Gateway
from gateway.config import GatewayConfig
from protocol.agent import ActiveWindow, Activity, Idle, Log

ENROLLMENT_KEY = "test-enrollment-key"


def make_config(data_dir: Path, **overrides: Any) -> GatewayConfig:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "enrollment_key": ENROLLMENT_KEY,
        "control": False,
    }
    values.update(overrides)
    return msgspec.convert(values, GatewayConfig)


def make_logs(n: int, kind: str = "idle") -> list[Log]:
    now = dt.datetime.now(dt.UTC)
    if kind == "activity":
        return [
            Activity(id=uuid.uuid4(), ts=now, keys=i, clicks=1, mouse_px=10, period_s=60)
            for i in range(n)
        ]
    return [Idle(id=uuid.uuid4(), ts=now, duration_ms=i) for i in range(n)]


def logs_json(logs: Sequence[Log]) -> bytes:
    return msgspec.json.encode({"logs": logs})


@asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway serving on 127.0.0.1:<free port>; yields it and its base URL."""
    gateway = Gateway(config)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(gateway.run)
        try:
            yield gateway, f"http://{address}"
        finally:
            gateway.request_stop()


async def register(client: httpx.AsyncClient, agent_uid: str = "agent-1", token: str = "") -> str:
    """Registers an agent (re-registers it with its current `token`); returns its token."""
    headers = {"X-Enrollment-Key": ENROLLMENT_KEY}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = await client.post(
        "/v1/agents/register",
        json={"agent_uid": agent_uid, "hostname": "ws-1", "os": "windows"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def wait_until(predicate: Any, within_s: float = 10.0, interval: float = 0.02) -> None:
    """Polls `predicate()` until true; fails the test after `within_s` seconds."""
    with trio.fail_after(within_s):
        # Polling on purpose: the condition lives in another component with no event to await.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(interval)


_APPS = ("chrome.exe", "outlook.exe", "excel.exe", "code.exe", "teams.exe", "explorer.exe")
_WORDS = (
    "report",
    "budget",
    "meeting",
    "invoice",
    "draft",
    "review",
    "quarterly",
    "plan",
    "customer",
    "inbox",
    "project",
    "sprint",
)


def varied_logs(n: int, rng: random.Random | None = None) -> list[Log]:
    """Logs that look like a working day (mixed kinds, varied titles): for benchmarks, where
    identical logs would compress unrealistically well."""
    rng = rng or random.Random()
    start = dt.datetime.now(dt.UTC)
    logs: list[Log] = []
    for i in range(n):
        ts = start + dt.timedelta(seconds=7 * i)
        roll = rng.random()
        if roll < 0.6:
            title = " - ".join(rng.sample(_WORDS, 3)) + f" ({rng.randint(1, 999)})"
            logs.append(
                ActiveWindow(
                    id=uuid.uuid4(),
                    ts=ts,
                    app=rng.choice(_APPS),
                    title=title,
                    duration_ms=rng.randint(100, 600_000),
                )
            )
        elif roll < 0.9:
            logs.append(
                Activity(
                    id=uuid.uuid4(),
                    ts=ts,
                    keys=rng.randint(0, 500),
                    clicks=rng.randint(0, 100),
                    mouse_px=rng.randint(0, 90_000),
                    period_s=60,
                )
            )
        else:
            logs.append(Idle(id=uuid.uuid4(), ts=ts, duration_ms=rng.randint(1000, 900_000)))
    return logs
