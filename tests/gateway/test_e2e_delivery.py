"""Guarantees 1 and 2 end to end: real backend, real gateway process, PostgreSQL checked."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from protocol.agent import Log
from tests.gateway.e2e import health, poll, post_logs, register, start_gateway, stored_ids
from tests.gateway.helpers import make_logs
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow


def test_backend_outage_then_drain_holds_each_log_exactly_once(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                token = register(client, enrollment_key)
                sent: list[str] = []
                for _ in range(10):
                    logs = make_logs(100)
                    assert post_logs(client, token, logs).status_code == 202
                    sent += [str(log.id) for log in logs]
                poll(lambda: len(stored_ids(database_url)) == len(sent), what="first drain")

                backend.stop()
                for _ in range(20):
                    logs = make_logs(100, kind="activity")
                    assert post_logs(client, token, logs).status_code == 202
                    sent += [str(log.id) for log in logs]
                during = health(gateway)
                assert during["queue_depth"] == 2000
                poll(lambda: health(gateway)["backend_connected"] is False, what="outage seen")

                backend.start()
                poll(lambda: health(gateway)["queue_depth"] == 0, what="drain after outage")
                stored = stored_ids(database_url)
                assert len(stored) == len(set(stored))
                assert set(stored) == set(sent)
                assert health(gateway)["last_upload_at"] is not None
        finally:
            assert gateway.stop() == 0


def test_kill_9_during_a_stream_of_posts_loses_and_duplicates_nothing(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        acknowledged: list[str] = []
        unanswered: list[list[Log]] = []
        stop = threading.Event()

        def agent(token: str) -> None:
            # Posts until the gateway dies; keeps what it could not deliver, like an agent.
            with httpx.Client(base_url=gateway.url, timeout=10) as client:
                while not stop.is_set():
                    logs = make_logs(100)
                    try:
                        response = post_logs(client, token, logs)
                    except httpx.TransportError:
                        unanswered.append(logs)
                        return
                    assert response.status_code == 202
                    acknowledged.extend(str(log.id) for log in logs)

        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            tokens = [register(client, enrollment_key, f"agent-{i}") for i in range(4)]
        agents = [threading.Thread(target=agent, args=(token,)) for token in tokens]
        for thread in agents:
            thread.start()
        try:
            poll(lambda: len(acknowledged) >= 3000, what="a stream of acknowledged posts")
            gateway.kill()
        finally:
            stop.set()
            for thread in agents:
                thread.join(30)
        assert len(unanswered) <= len(agents)

        gateway.start()
        try:
            # What the agents never got an answer for, they send again after the restart.
            with httpx.Client(base_url=gateway.url, timeout=10) as client:
                for logs in unanswered:
                    assert post_logs(client, tokens[0], logs).status_code == 202
            expected = set(acknowledged) | {str(log.id) for logs in unanswered for log in logs}
            poll(lambda: health(gateway)["queue_depth"] == 0, what="drain after restart")
            stored = stored_ids(database_url)
            assert len(stored) == len(set(stored)), "a log was stored twice"
            assert set(stored) == expected
        finally:
            assert gateway.stop() == 0
