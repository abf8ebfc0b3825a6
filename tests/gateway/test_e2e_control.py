"""The control channel end to end: the real backend, a real `td-gateway run`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.gateway.e2e import health, poll, register
from tests.gateway.process import GatewayProcess
from tests.support.backend import BackendProcess, running_backend

pytestmark = pytest.mark.slow
FAST = {"TD_HEARTBEAT_INTERVAL": "0.5"}


def start_gateway(
    tmp_path: Path, backend: BackendProcess, name: str = "gw"
) -> tuple[GatewayProcess, str, str]:
    """A gateway enrolled in `backend` that takes its enrollment key from the welcome."""
    gateway_id, api_key, enrollment_key = backend.create_gateway(name)
    gateway = GatewayProcess(
        tmp_path / name,
        "--backend-url",
        backend.url,
        "--control-backoff-base-s",
        "0.2",
        "--control-backoff-cap-s",
        "1",
        env={"TD_GATEWAY_API_KEY": api_key},
    ).start()
    return gateway, gateway_id, enrollment_key


def gateway_row(backend: BackendProcess, gateway_id: str) -> dict[str, Any]:
    with backend.admin() as admin:
        row: dict[str, Any] = admin.get(f"/v2/gateways/{gateway_id}").json()
    return row


def command(backend: BackendProcess, gateway_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    with backend.admin() as admin:
        created = admin.post(f"/v2/gateways/{gateway_id}/commands", json={"type": kind, **extra})
        assert created.status_code == 202, created.text
        body: dict[str, Any] = created.json()
    return body


def wait_command(backend: BackendProcess, gateway_id: str, command_id: str) -> dict[str, Any]:
    with backend.admin() as admin:
        answer = admin.get(f"/v2/gateways/{gateway_id}/commands/{command_id}", params={"wait": 20})
        body: dict[str, Any] = answer.json()
    return body


def test_status_reaches_the_backend_and_stopping_goes_offline(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway, gateway_id, enrollment_key = start_gateway(tmp_path, backend)
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control connected")
            poll(
                lambda: gateway_row(backend, gateway_id)["queue_depth"] is not None,
                30,
                "a status report",
            )
            row = gateway_row(backend, gateway_id)
            assert row["status"] == "ONLINE"
            assert row["queue_depth"] == 0

            # An agent registering at the gateway shows up at the backend (agents_seen).
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                poll(lambda: health(gateway)["control_connected"] is True, 30, "connected")
                register(client, enrollment_key, "ws-42")

            def agents() -> list[dict[str, Any]]:
                with backend.admin() as admin:
                    items: list[dict[str, Any]] = admin.get("/v2/agents").json()["items"]
                return items

            poll(lambda: any(a["agent_uid"] == "ws-42" for a in agents()), 30, "agents_seen")
            seen = next(a for a in agents() if a["agent_uid"] == "ws-42")
            assert seen["gateway_id"] == gateway_id
            assert seen["status"] == "ONLINE"
        finally:
            assert gateway.stop() == 0
        poll(lambda: gateway_row(backend, gateway_id)["status"] == "OFFLINE", 30, "OFFLINE")


def test_a_policy_change_reaches_a_long_polling_agent_and_is_acked(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        with backend.admin() as admin:
            policy = admin.post(
                "/v2/policies",
                json={"name": "office", "body": {"idle_threshold_s": 120}, "is_default": True},
            ).json()
        gateway, gateway_id, enrollment_key = start_gateway(tmp_path, backend)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                poll(lambda: health(gateway)["control_connected"] is True, 30, "connected")
                token = register(client, enrollment_key)  # the key came with the welcome
                auth = {"Authorization": f"Bearer {token}"}
                first = client.get("/v1/policy", headers=auth)
                assert first.json()["policy_id"] == policy["id"]
                assert first.json()["body"]["idle_threshold_s"] == 120

                answers: list[httpx.Response] = []
                long_poll = threading.Thread(
                    target=lambda: answers.append(
                        client.get(
                            "/v1/policy",
                            params={"wait": 20},
                            headers={**auth, "If-None-Match": first.headers["ETag"]},
                        )
                    )
                )
                long_poll.start()
                poll(lambda: "td_gateway_policy_long_polls 1.0" in metrics(gateway), 10, "poll")
                with backend.admin() as admin:
                    changed = admin.put(
                        f"/v2/policies/{policy['id']}", json={"body": {"idle_threshold_s": 60}}
                    ).json()
                long_poll.join(30)
                assert answers[0].status_code == 200
                assert answers[0].json()["revision"] == changed["revision"]
                assert answers[0].json()["body"]["idle_threshold_s"] == 60

            def in_sync() -> bool:
                with backend.admin() as admin:
                    status = admin.get(f"/v2/policies/{policy['id']}/status").json()
                return any(
                    g["gateway_id"] == gateway_id and g["in_sync"] for g in status["gateways"]
                )

            poll(in_sync, 30, "the ack in the policy status")
        finally:
            assert gateway.stop() == 0


def test_a_gateway_offline_during_a_policy_change_gets_it_on_reconnect(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        with backend.admin() as admin:
            policy = admin.post(
                "/v2/policies", json={"name": "p", "body": {}, "is_default": True}
            ).json()
        gateway, _, enrollment_key = start_gateway(tmp_path, backend)
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "connected")
            token = register(client, enrollment_key)
        assert gateway.stop() == 0
        with backend.admin() as admin:
            changed = admin.put(
                f"/v2/policies/{policy['id']}", json={"body": {"track_urls": True}}
            ).json()
        gateway.start()
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:

                def revision() -> int:
                    answer = client.get("/v1/policy", headers={"Authorization": f"Bearer {token}"})
                    value: int = answer.json()["revision"]
                    return value

                poll(lambda: revision() == changed["revision"], 30, "the new revision")
        finally:
            assert gateway.stop() == 0


def test_gateway_commands_ping_flush_and_restart(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway, gateway_id, _ = start_gateway(tmp_path, backend)
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "connected")
            ping = wait_command(backend, gateway_id, command(backend, gateway_id, "ping")["id"])
            assert ping["status"] == "SUCCESS", ping
            assert ping["result"]["pong"] is True
            flush = wait_command(backend, gateway_id, command(backend, gateway_id, "flush")["id"])
            assert flush["status"] == "SUCCESS", flush
            sync = command(backend, gateway_id, "sync_policy")
            assert wait_command(backend, gateway_id, sync["id"])["status"] == "SUCCESS"

            restart = command(backend, gateway_id, "restart")
            assert gateway.process is not None
            assert gateway.process.wait(30) == 75
            assert wait_command(backend, gateway_id, restart["id"])["status"] == "SUCCESS"
        finally:
            gateway.stop()


def test_a_command_for_an_offline_gateway_waits_expires_or_is_cancelled(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        gateway, gateway_id, _ = start_gateway(tmp_path, backend)
        poll(lambda: health(gateway)["control_connected"] is True, 30, "connected")
        assert gateway.stop() == 0
        waiting = command(backend, gateway_id, "ping", expires_in_s=300)
        cancelled = command(backend, gateway_id, "ping", expires_in_s=300)
        expiring = command(backend, gateway_id, "ping", expires_in_s=0.5)
        with backend.admin() as admin:
            admin.post(f"/v2/gateways/{gateway_id}/commands/{cancelled['id']}/cancel")
        assert wait_command(backend, gateway_id, expiring["id"])["status"] == "TIMED_OUT"
        gateway.start()
        try:
            assert wait_command(backend, gateway_id, waiting["id"])["status"] == "SUCCESS"
            assert wait_command(backend, gateway_id, cancelled["id"])["status"] == "CANCELED"
        finally:
            assert gateway.stop() == 0


def test_a_refused_key_is_one_clear_line_and_agents_are_still_served(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env=FAST) as backend:
        backend.create_gateway("real")
        gateway = GatewayProcess(
            tmp_path / "gw",
            "--backend-url",
            backend.url,
            "--control-backoff-base-s",
            "0.1",
            "--control-backoff-cap-s",
            "0.2",
            env={"TD_GATEWAY_API_KEY": "not-a-key", "TD_ENROLLMENT_KEY": "local"},
        ).start()
        try:
            poll(lambda: gateway.log_text().count("control_refused") >= 1, 30, "refusal")
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                assert register(client, "local")
            assert health(gateway)["control_connected"] is False
            assert gateway.log_text().count("control_refused") == 1
        finally:
            assert gateway.stop() == 0


def metrics(gateway: GatewayProcess) -> str:
    return httpx.get(gateway.url + "/metrics", timeout=10).text


def test_policy_and_command_through_another_backend_instance(
    tmp_path: Path, database_url: str
) -> None:
    # Instances of one deployment share the key that encrypts stored secrets.
    env = {**FAST, "TD_SECRET_KEY": Fernet.generate_key().decode()}
    with running_backend(tmp_path, database_url, env=env) as instance_a:
        instance_b = BackendProcess(tmp_path / "backend-b", database_url, env=env)
        instance_b.admin_token, instance_b.org_id = instance_a.admin_token, instance_a.org_id
        instance_b.start()
        try:
            with instance_a.admin() as admin:
                policy = admin.post(
                    "/v2/policies", json={"name": "p", "body": {}, "is_default": True}
                ).json()
            # Enrolled through A, connected to B.
            gateway_id, api_key, enrollment_key = instance_a.create_gateway("gw")
            gateway = GatewayProcess(
                tmp_path / "gw",
                "--backend-url",
                instance_b.url,
                env={"TD_GATEWAY_API_KEY": api_key},
            ).start()
            try:
                poll(lambda: health(gateway)["control_connected"] is True, 30, "connected to B")
                with httpx.Client(base_url=gateway.url, timeout=30) as client:
                    token = register(client, enrollment_key)
                    with instance_a.admin() as admin:
                        changed = admin.put(
                            f"/v2/policies/{policy['id']}", json={"body": {"track_urls": True}}
                        ).json()

                    def revision() -> int:
                        answer = client.get(
                            "/v1/policy", headers={"Authorization": f"Bearer {token}"}
                        )
                        value: int = answer.json()["revision"]
                        return value

                    poll(lambda: revision() == changed["revision"], 30, "policy via A")
                ping = command(instance_a, gateway_id, "ping")
                assert wait_command(instance_a, gateway_id, ping["id"])["status"] == "SUCCESS"
            finally:
                assert gateway.stop() == 0
        finally:
            instance_b.stop()
            instance_b.kill()
