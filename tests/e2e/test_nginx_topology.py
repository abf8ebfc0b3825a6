"""The compose topology from real processes: two backend instances on one PostgreSQL behind
nginx (the project's own config, TLS terminated there), and a gateway whose uplink and
control channel both go through the proxy."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.e2e.nginx import running_nginx
from tests.gateway.e2e import health, poll, post_logs, register, stored_ids
from tests.gateway.helpers import make_logs
from tests.gateway.process import GatewayProcess
from tests.gateway.test_tls import self_signed
from tests.support.backend import BackendProcess

pytestmark = pytest.mark.slow
METRICS_TOKEN = "metrics-token-for-this-test"


def test_two_backends_behind_nginx_serve_a_gateway(tmp_path: Path, database_url: str) -> None:
    # Instances share the database and the key that encrypts device passwords.
    env = {
        "TD_SECRET_KEY": Fernet.generate_key().decode(),
        "TD_HEARTBEAT_INTERVAL": "0.5",
        "TD_METRICS_TOKEN": METRICS_TOKEN,
    }
    first = BackendProcess(tmp_path / "backend-a", database_url, env=env)
    second = BackendProcess(tmp_path / "backend-b", database_url, env=env)
    gateway: GatewayProcess | None = None
    try:
        first.start()
        second.admin_token, second.org_id = first.admin_token, first.org_id
        second.start()
        cert, key = self_signed(tmp_path)
        upstreams = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        with running_nginx(tmp_path / "nginx", upstreams, cert, key) as proxy_url:
            admin = {"Authorization": f"Bearer {first.admin_token}"}
            with httpx.Client(
                base_url=proxy_url, verify=ssl.create_default_context(cafile=cert), headers=admin
            ) as proxy:
                created = proxy.post("/v2/gateways", json={"name": "site-1"})
                assert created.status_code == 201, created.text
                gateway_id, api_key, enrollment_key = (
                    created.json()[field] for field in ("id", "api_key", "enrollment_key")
                )
                policy = proxy.post(
                    "/v2/policies", json={"name": "office", "body": {}, "is_default": True}
                ).json()

            gateway = GatewayProcess(
                tmp_path / "gateway",
                "--backend-url", proxy_url,
                "--ca-bundle", str(cert),
                "--control-backoff-base-s", "0.2",
                "--control-backoff-cap-s", "1",
                "--upload-backoff-base-s", "0.05",
                "--upload-backoff-cap-s", "0.5",
                env={"TD_GATEWAY_API_KEY": api_key},
            ).start()  # fmt: skip
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control via nginx")

            # Uplink through the proxy: every acknowledged log lands exactly once.
            logs = make_logs(300)
            with httpx.Client(base_url=gateway.url, timeout=30) as agent:
                token = register(agent, enrollment_key)
                for start in range(0, len(logs), 100):
                    answer = post_logs(agent, token, logs[start : start + 100])
                    assert answer.status_code == 202, answer.text
                expected = sorted(str(log.id) for log in logs)
                poll(lambda: sorted(stored_ids(database_url)) == expected, 60, "logs stored")

                # A change made on either instance reaches the gateway, wherever its socket is.
                for instance, threshold in ((first, 120), (second, 180)):
                    with instance.admin() as direct:
                        changed = direct.put(
                            f"/v2/policies/{policy['id']}",
                            json={"body": {"idle_threshold_s": threshold}},
                        ).json()
                    poll(
                        lambda revision=changed["revision"]: (  # type: ignore[misc]
                            agent_policy(agent, token)["revision"] == revision
                        ),
                        30,
                        f"revision {changed['revision']} at the agent",
                    )
                    assert agent_policy(agent, token)["body"]["idle_threshold_s"] == threshold
                    ping = run_command(instance, gateway_id, "ping")
                    assert ping["status"] == "SUCCESS", ping

            with first.admin() as direct:
                row = direct.get(f"/v2/gateways/{gateway_id}").json()
            assert row["status"] == "ONLINE"

            # The fleet series through the proxy: only with the metrics token.
            with httpx.Client(
                base_url=proxy_url, verify=ssl.create_default_context(cafile=cert)
            ) as anyone:
                scraped = anyone.get(
                    "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
                )
                assert scraped.status_code == 200
                assert f'gateway_id="{gateway_id}"' in scraped.text
                for headers in ({}, {"Authorization": "Bearer guessed"}):
                    refused = anyone.get("/metrics", headers=headers)
                    assert refused.status_code == 401, headers
                    assert refused.json()["error"] == "unauthorized"
                    assert gateway_id not in refused.text
    finally:
        if gateway is not None and gateway.process is not None:
            gateway.stop()
        second.stop()
        first.stop()


def agent_policy(agent: httpx.Client, token: str) -> dict[str, Any]:
    answer = agent.get("/v1/policy", headers={"Authorization": f"Bearer {token}"})
    body: dict[str, Any] = answer.json()
    return body


def run_command(backend: BackendProcess, gateway_id: str, kind: str) -> dict[str, Any]:
    with backend.admin() as admin:
        created = admin.post(f"/v2/gateways/{gateway_id}/commands", json={"type": kind})
        assert created.status_code == 202, created.text
        answer = admin.get(
            f"/v2/gateways/{gateway_id}/commands/{created.json()['id']}", params={"wait": 20}
        )
    body: dict[str, Any] = answer.json()
    return body
