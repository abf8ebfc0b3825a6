"""The uplink's signatures against a real backend: a gateway whose clock is an hour off is
refused for the time once, signs again with the backend's clock and delivers every log
exactly once, nothing dead-lettered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from gateway.buffer import Buffer
from gateway.client_identity import ClientIdentity
from gateway.metrics import Metrics
from gateway.uplink import Uplink
from tests.gateway.e2e import stored_ids
from tests.gateway.helpers import make_config, make_logs
from tests.support.backend import BackendProcess, running_backend

pytestmark = pytest.mark.slow


@pytest.fixture
def backend(tmp_path: Path, database_url: str) -> Iterator[BackendProcess]:
    with running_backend(tmp_path, database_url) as started:
        yield started


@pytest.mark.parametrize("skew_s", [3600.0, -3600.0])
@pytest.mark.trio
async def test_a_gateway_clock_off_by_an_hour_signs_with_the_backends_time(
    tmp_path: Path, backend: BackendProcess, database_url: str, skew_s: float
) -> None:
    _, api_key, _ = backend.create_gateway("skewed")
    config = make_config(
        tmp_path / "gateway",
        backend_url=backend.url,
        api_key=api_key,
        upload_backoff_base_s=0.05,
        upload_backoff_cap_s=0.5,
    )
    metrics = Metrics()
    identity = ClientIdentity(config, clock=lambda: time.time() + skew_s)
    async with httpx.AsyncClient(
        base_url=backend.url, headers={"X-API-Key": api_key}, timeout=10
    ) as client:
        assert await identity.enroll(client) == 201
    buffer = Buffer(config.data_path, max_bytes=1 << 30)
    uplink = Uplink(config, buffer, metrics, identity=identity)
    logs = make_logs(50)
    async with trio.open_nursery() as nursery:
        await nursery.start(buffer.run)
        await buffer.append("agent", logs)
        await nursery.start(uplink.run)
        with trio.fail_after(60):
            while uplink.uploaded_total < len(logs):  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert buffer.stats is not None
    assert buffer.stats.dead_logs == 0
    assert abs(identity.clock_offset_s + skew_s) < 60
    expected = sorted(str(log.id) for log in logs)
    stored = await trio.to_thread.run_sync(stored_ids, database_url)
    assert sorted(i for i in stored if i in set(expected)) == expected
    # The first attempt was refused for the time (the backend says so), then signed again.
    assert "signature_expired" in backend.log_path.read_text()
