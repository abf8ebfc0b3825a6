"""An enrollment key rotated through the admin API reaches a real running gateway: agents
with the old key are refused there, the new key enrolls them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.gateway.e2e import health, poll, register
from tests.gateway.process import GatewayProcess
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow


def enrolls(gateway: GatewayProcess, enrollment_key: str, agent_uid: str) -> int:
    with httpx.Client(base_url=gateway.url, timeout=10) as agent:
        return agent.post(
            "/v1/agents/register",
            json={"agent_uid": agent_uid, "hostname": "ws"},
            headers={"X-Enrollment-Key": enrollment_key},
        ).status_code


def test_a_rotated_enrollment_key_is_pushed_to_the_gateway(
    tmp_path: Path, database_url: str
) -> None:
    with running_backend(tmp_path, database_url, env={"TD_HEARTBEAT_INTERVAL": "0.5"}) as backend:
        gateway_id, api_key, old_key = backend.create_gateway()
        # The key from the environment, and no TD_ENROLLMENT_KEY: the backend's key is used.
        gateway = GatewayProcess(
            tmp_path / "gateway",
            "--backend-url",
            backend.url,
            env={"TD_GATEWAY_API_KEY": api_key, "TD_ENROLLMENT_KEY": ""},
        ).start()
        try:
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel")
            poll(lambda: enrolls(gateway, old_key, "before") == 200, 30, "the first key")

            with backend.admin() as admin:
                rotated = admin.post(f"/v2/gateways/{gateway_id}/rotate-enrollment-key")
                assert rotated.status_code == 200
                new_key = rotated.json()["enrollment_key"]

            poll(lambda: enrolls(gateway, old_key, "late") == 401, 30, "the old key refused")
            with httpx.Client(base_url=gateway.url, timeout=10) as agent:
                assert register(agent, new_key, "after")
        finally:
            assert gateway.stop() == 0
