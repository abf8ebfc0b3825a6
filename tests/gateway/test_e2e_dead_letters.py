"""Nothing acknowledged is dropped silently: logs the real backend refuses become dead letters
one by one, with its reason, while the rest of their batch is stored; an operator lists,
shows, replays and drops them with `td-gateway dead-letters`, the gateway running or not."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.buffer import BUFFER_FILE
from gateway.buffer_store import BufferStore
from gateway.dead_letters import list_letters, show
from protocol.agent import ActiveWindow, Idle, Log
from tests.gateway.e2e import health, poll, post_logs, register, start_gateway, stored_ids
from tests.gateway.helpers import make_config, make_logs, running_gateway, varied_logs, wait_until
from tests.gateway.process import GATEWAY
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow


def open_store(data_dir: Path) -> BufferStore:
    return BufferStore(
        str(data_dir / BUFFER_FILE), max_bytes=1 << 30, overflow="drop_oldest", durability="full"
    )


@pytest.mark.trio
async def test_a_poison_log_is_dead_lettered_with_its_reason_and_its_batch_stored(
    tmp_path: Path, database_url: str
) -> None:
    # A ts the backend refuses with 400, as it would be if gateway and backend disagreed on
    # what a storable log is; it enters the buffer below the agent API's own checks.
    poison = Idle(id=uuid.uuid4(), ts=dt.datetime(1900, 1, 1, tzinfo=dt.UTC), duration_ms=1)
    first, second = varied_logs(150), varied_logs(150)
    with running_backend(tmp_path, database_url) as backend:
        _, api_key, _ = backend.create_gateway("gw")
        config = make_config(
            tmp_path / "gw",
            backend_url=backend.url,
            api_key=api_key,
            upload_backoff_base_s=0.05,
            upload_backoff_cap_s=0.5,
        )
        async with running_gateway(config) as (gateway, _):
            await gateway.buffer.append("agent-1", [*first[:70], poison, *first[70:]])
            await gateway.buffer.append("agent-2", second)
            await wait_until(lambda: gateway.health().queue_depth == 0, within_s=60)
            stored = await trio.to_thread.run_sync(stored_ids, database_url)
            assert sorted(stored) == sorted(str(log.id) for log in first + second)
            figures = gateway.health()
            assert figures.dead_letters == 1
            assert figures.dead_letter_total == 1
            assert figures.status == "degraded"
            assert figures.fault is not None and "dead letters" in figures.fault
            metrics = gateway.metrics.render().decode()
            assert "td_gateway_dead_letters 1.0" in metrics

    store = open_store(tmp_path / "gw")
    try:
        (letter,) = list_letters(store)
        assert letter.status == 400
        assert letter.agent_uid == "agent-1"
        assert "ts" in letter.detail and "1900" in letter.detail  # the backend's own reason
        found = show(store, letter.id)
        assert found is not None
        assert [entry["id"] for entry in found[1]] == [str(poison.id)]
    finally:
        store.close()


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, "dead-letters", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_json(data_dir: Path, *args: str) -> Any:
    done = cli(data_dir, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def listed(data_dir: Path) -> list[dict[str, Any]]:
    done = cli(data_dir, "list")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def oversized(seed: int) -> Log:
    # ~3 KB of msgpack: more than the backend below takes in one request, even alone.
    return ActiveWindow(
        id=uuid.uuid4(),
        ts=dt.datetime.now(dt.UTC),
        app="browser",
        title=f"{seed}" * 1000,
        url="https://example.test/" + "p" * 2000,
        duration_ms=1,
    )


def test_dead_letters_cli_lists_shows_replays_and_drops_with_the_gateway_running_or_not(
    tmp_path: Path, database_url: str
) -> None:
    env = {"TD_INGEST_MAX_BYTES": "2048"}
    with running_backend(tmp_path, database_url, env=env) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        data_dir = gateway.data_dir
        try:
            small_a, small_b = make_logs(5), make_logs(5)
            big_a, big_b = oversized(1), oversized(2)
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                token = register(client, enrollment_key)
                assert post_logs(client, token, [*small_a, big_a]).status_code == 202
                assert post_logs(client, token, [big_b, *small_b]).status_code == 202
            smalls = sorted(str(log.id) for log in small_a + small_b)
            poll(lambda: health(gateway)["dead_letters"] == 2, what="two dead letters")
            poll(lambda: sorted(stored_ids(database_url)) == smalls, what="the small logs")

            letters = listed(data_dir)
            assert [letter["status"] for letter in letters] == [413, 413]
            assert [letter["n_logs"] for letter in letters] == [1, 1]
            by_log = {}
            for letter in letters:
                shown = cli_json(data_dir, "show", str(letter["id"]))
                assert shown["detail"] == letter["detail"]
                (entry,) = shown["logs"]
                by_log[entry["id"]] = letter["id"]
            assert set(by_log) == {str(big_a.id), str(big_b.id)}

            assert cli(data_dir, "replay").returncode == 2  # neither an id nor --all

            # The backend is fixed (takes bigger bodies); the operator replays one of them.
            backend.stop()
            del backend.env["TD_INGEST_MAX_BYTES"]
            backend.start()
            replayed = cli_json(data_dir, "replay", str(by_log[str(big_a.id)]))
            assert replayed == {"replayed": 1, "logs": 1}
            expected = sorted([*smalls, str(big_a.id)])
            poll(lambda: sorted(stored_ids(database_url)) == expected, what="the replayed log")
            poll(lambda: health(gateway)["dead_letters"] == 1, what="one dead letter left")
            figures = health(gateway)
            assert figures["queue_depth"] == 0
            assert figures["dead_letter_total"] == 2  # a counter: every refusal ever
            assert [letter["id"] for letter in listed(data_dir)] == [by_log[str(big_b.id)]]
        finally:
            assert gateway.stop() == 0
        # With the gateway stopped, the same commands work on its data directory.
        dropped = by_log[str(big_b.id)]
        assert cli_json(data_dir, "drop", str(dropped)) == {"dropped": 1, "logs": 1}
        assert cli(data_dir, "show", str(dropped)).returncode == 1
        assert listed(data_dir) == []
        assert cli_json(data_dir, "drop", "--all") == {"dropped": 0, "logs": 0}
        assert sorted(stored_ids(database_url)) == expected


def test_a_split_cut_short_by_kill_9_resumes_and_stores_each_log_once(
    tmp_path: Path, database_url: str
) -> None:
    # 200 logs of ~1 KB: the backend refuses the batch and its halves (413 past 64 KiB) and
    # takes quarters. Its rate limit (one batch a second after a burst of four) stretches the
    # split over seconds, so the gateway is killed between two parts it has sent.
    env = {
        "TD_INGEST_MAX_BYTES": str(64 * 1024),
        "TD_INGEST_RATE_PER_S": "1",
        "TD_INGEST_BURST": "4",
    }
    logs = [
        ActiveWindow(id=log.id, ts=log.ts, app="editor", duration_ms=1, title="t" * 1000)
        for log in make_logs(200)
    ]
    sent = sorted(str(log.id) for log in logs)
    with running_backend(tmp_path, database_url, env=env) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                token = register(client, enrollment_key)
                assert post_logs(client, token, logs).status_code == 202
            poll(lambda: 0 < len(stored_ids(database_url)) < 200, what="a part stored")
            gateway.kill()
            gateway.start()
            poll(lambda: len(stored_ids(database_url)) >= 200, what="every log stored")
            poll(lambda: health(gateway)["queue_depth"] == 0, what="an empty queue")
            assert sorted(stored_ids(database_url)) == sent  # each exactly once
            assert health(gateway)["dead_letters"] == 0
        finally:
            assert gateway.stop() == 0
