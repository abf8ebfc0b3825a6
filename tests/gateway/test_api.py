from __future__ import annotations

import gzip
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from gateway.state import BUILTIN_POLICY_ID
from protocol import codec
from protocol.agent import PolicyBody
from protocol.control import PolicyUpdate
from tests.gateway.helpers import (
    ENROLLMENT_KEY,
    logs_json,
    make_config,
    make_logs,
    register,
    running_gateway,
    varied_logs,
    wait_until,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.trio
async def test_posted_logs_are_committed_before_the_202(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path)) as (gateway, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        token = await register(client)
        logs = make_logs(100)
        response = await client.post("/v1/logs", content=logs_json(logs), headers=bearer(token))
        assert response.status_code == 202
        assert response.json() == {"accepted": 100}
        assert gateway.buffer.stats is not None
        assert gateway.buffer.stats.queue_depth == 100
        health = (await client.get("/health")).json()
        assert health["queue_depth"] == 100
        assert health["connected_agents"] == 1


@pytest.mark.trio
async def test_msgpack_and_gzip_bodies_are_accepted(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path)) as (gateway, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        token = await register(client)
        packed = codec.msgpack_encoder.encode({"logs": make_logs(10)})
        response = await client.post(
            "/v1/logs",
            content=packed,
            headers={**bearer(token), "Content-Type": "application/msgpack"},
        )
        assert response.status_code == 202, response.text
        response = await client.post(
            "/v1/logs",
            content=gzip.compress(logs_json(make_logs(5))),
            headers={**bearer(token), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 202, response.text
        assert gateway.buffer.stats is not None
        assert gateway.buffer.stats.queue_depth == 15


@pytest.mark.trio
async def test_agent_errors_say_what_is_wrong(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_request_bytes=64 * 1024)
    async with (
        running_gateway(config) as (gateway, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        token = await register(client)
        bad = msgspec.json.decode(logs_json(make_logs(5)))
        bad["logs"][3]["ts"] = 12
        response = await client.post(
            "/v1/logs", content=msgspec.json.encode(bad), headers=bearer(token)
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_body"
        assert response.json()["detail"].startswith("$.logs[3].ts")

        # A broken agent clock (C#'s DateTime.MinValue) is refused here, not at the backend
        # where it would dead-letter a whole upload batch.
        bad["logs"][3]["ts"] = "0001-01-01T00:00:00Z"
        response = await client.post(
            "/v1/logs", content=msgspec.json.encode(bad), headers=bearer(token)
        )
        assert response.status_code == 400
        assert response.json()["detail"].startswith("$.logs[3].ts: 0001-01-01")

        response = await client.post(
            "/v1/logs", content=logs_json(make_logs(1)), headers=bearer(token + "x")
        )
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        response = await client.post("/v1/logs", content=logs_json(make_logs(1)))
        assert response.status_code == 401

        response = await client.post(
            "/v1/logs", content=logs_json(make_logs(1000)), headers=bearer(token)
        )
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"

        bomb = gzip.compress(b'{"logs": [' + b" " * (1024 * 1024) + b"]}")
        response = await client.post(
            "/v1/logs", content=bomb, headers={**bearer(token), "Content-Encoding": "gzip"}
        )
        assert response.status_code == 413

        assert gateway.buffer.stats is not None
        assert gateway.buffer.stats.queue_depth == 0


@pytest.mark.trio
async def test_registration_needs_the_enrollment_key(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path)) as (_, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        body = {"agent_uid": "a", "hostname": "h"}
        wrong = await client.post(
            "/v1/agents/register", json=body, headers={"X-Enrollment-Key": "nope"}
        )
        assert wrong.status_code == 401
        missing_field = await client.post(
            "/v1/agents/register",
            json={"agent_uid": "a"},
            headers={"X-Enrollment-Key": ENROLLMENT_KEY},
        )
        assert missing_field.status_code == 400
        assert "hostname" in missing_field.json()["detail"]
        first = await register(client, "a")
        second = await register(client, "a", token=first)  # re-registering rotates the token
        assert (await client.get("/v1/policy", headers=bearer(first))).status_code == 401
        assert (await client.get("/v1/policy", headers=bearer(second))).status_code == 200


@pytest.mark.trio
async def test_registration_without_any_enrollment_key_is_unavailable(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path, enrollment_key="")) as (_, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await client.post(
            "/v1/agents/register",
            json={"agent_uid": "a", "hostname": "h"},
            headers={"X-Enrollment-Key": ""},
        )
        assert response.status_code == 503
        assert "Retry-After" in response.headers


@pytest.mark.trio
async def test_registrations_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_gateway(config) as (_, url), httpx.AsyncClient(base_url=url) as client:
        token = await register(client)
    async with running_gateway(config) as (_, url), httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/logs", content=logs_json(make_logs(1)), headers=bearer(token)
        )
        assert response.status_code == 202


@pytest.mark.trio
async def test_reject_mode_answers_503_with_retry_after(tmp_path: Path) -> None:
    config = make_config(tmp_path, buffer_max_bytes=64 * 1024, buffer_overflow="reject")
    async with running_gateway(config) as (_, url), httpx.AsyncClient(base_url=url) as client:
        token = await register(client)
        statuses = []
        for _ in range(100):
            response = await client.post(
                "/v1/logs", content=logs_json(varied_logs(100)), headers=bearer(token)
            )
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert int(response.headers["Retry-After"]) > 0
                assert response.json()["error"] == "buffer_full"
                break
        assert statuses[-1] == 503
        assert set(statuses[:-1]) == {202}


@pytest.mark.trio
async def test_policy_etag_and_long_poll(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path)) as (gateway, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        token = await register(client)
        first = await client.get("/v1/policy", headers=bearer(token))
        assert first.status_code == 200
        assert first.json()["policy_id"] == BUILTIN_POLICY_ID
        tag = first.headers["ETag"]
        same = await client.get("/v1/policy", headers={**bearer(token), "If-None-Match": tag})
        assert same.status_code == 304

        body = PolicyBody(idle_threshold_s=60)
        update = PolicyUpdate(
            policy_id="p1",
            revision=2,
            checksum=codec.policy_checksum(body),
            body=body,
            is_default=True,
        )
        answers: list[httpx.Response] = []

        async def long_poll() -> None:
            answers.append(
                await client.get(
                    "/v1/policy",
                    params={"wait": "30"},
                    headers={**bearer(token), "If-None-Match": tag},
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await wait_until(
                lambda: (
                    gateway.metrics.registry.get_sample_value("td_gateway_policy_long_polls") == 1
                )
            )
            await gateway.state.apply_policy(update)
        assert answers[0].status_code == 200
        assert answers[0].json()["policy_id"] == "p1"
        assert answers[0].json()["body"]["idle_threshold_s"] == 60
        assert answers[0].headers["ETag"] != tag


@pytest.mark.trio
async def test_health_metrics_and_schema(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path)) as (_, url),
        httpx.AsyncClient(base_url=url) as client,
    ):
        health = (await client.get("/health")).json()
        for field in (
            "status",
            "queue_depth",
            "queue_bytes",
            "oldest_age_s",
            "dropped_total",
            "last_upload_at",
            "backend_connected",
            "connected_agents",
            "dead_letter_total",
        ):
            assert field in health
        metrics = (await client.get("/metrics")).text
        assert "td_gateway_buffer_logs 0.0" in metrics
        assert "td_gateway_upload_duration_seconds_bucket" in metrics
        schema = (await client.get("/schema")).json()
        assert "/v1/logs" in schema["paths"]
        assert "LogsRequest" in schema["components"]["schemas"]
        assert (await client.get("/nope")).status_code == 404
        assert (await client.get("/v1/logs")).status_code == 405
