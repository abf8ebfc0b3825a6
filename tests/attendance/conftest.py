"""The backend app in-process on a fresh database (the fixtures of tests/backend), plus
helpers to ingest logs through the real endpoint and wait for the attendance engine."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.backend.conftest import (  # noqa: F401  (fixtures)
    Org,
    batch,
    create_gateway,
    log,
    make_app,
    migrated_url,
    new_org,
    org,
)

WAIT_S = 20.0


@pytest.fixture
async def client(
    make_app: Any,  # noqa: F811
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=make_app(attendance_interval=0.1)) as test_client:
        yield test_client


async def ingest(
    client: AsyncTestClient[Litestar],
    api_key: str,
    groups: dict[str, list[dict[str, Any]]],
    batch_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    response = await client.post(
        "/v2/ingest/logs",
        content=msgspec.json.encode(batch(groups, batch_id)),
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def punch(
    when: dt.datetime, employee_no: str, serial_no: int, minor: int = 1, **fields: Any
) -> dict[str, Any]:
    return log(
        "device_event",
        ts=when,
        device_id="door-1",
        serial_no=serial_no,
        major=5,
        minor=minor,
        employee_no=employee_no,
        **fields,
    )


async def eventually(
    probe: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], what: str
) -> Any:
    """Poll `probe` until `check` accepts its value; fail naming `what` after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r}")
        await anyio.sleep(0.05)


async def attendance(
    client: AsyncTestClient[Litestar],
    org: Org,  # noqa: F811
    first: str,
    last: str,
    **params: str,
) -> list[dict[str, Any]]:
    response = await client.get(
        "/v2/attendance", params={"from": first, "to": last, **params}, headers=org.headers
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def day_of(
    client: AsyncTestClient[Litestar],
    org: Org,  # noqa: F811
    employee_id: str,
    day: str,
    check: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """The attendance row of one employee-day, once `check` holds for it."""

    async def probe() -> dict[str, Any]:
        rows = await attendance(client, org, day, day, employee_id=employee_id)
        return rows[0] if rows else {}

    row: dict[str, Any] = await eventually(probe, lambda r: bool(r) and check(r), day)
    return row
