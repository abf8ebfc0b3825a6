"""What an organisation can revoke, and that each revocation holds at once on every instance:
named admin tokens (with expiry), gateways (disable / enable / delete) and enrollment keys."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.backend.conftest import Org, batch, create_gateway, log

pytestmark = pytest.mark.anyio


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_named_admin_tokens_are_listed_without_secrets_and_revoked_at_once(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    # (Across instances: tests/backend/test_control_trust.py, with two real processes.)
    created = await client.post(
        "/v2/admin-tokens", json={"name": "ci deploys"}, headers=org.headers
    )
    assert created.status_code == 201
    token = created.json()
    assert token["name"] == "ci deploys" and token["token"].startswith("tda_")
    assert (await client.get("/v2/gateways", headers=bearer(token["token"]))).status_code == 200

    listed = (await client.get("/v2/admin-tokens", headers=org.headers)).json()["items"]
    assert [item["name"] for item in listed] == ["initial", "ci deploys"]
    assert all("token" not in item and "token_hash" not in item for item in listed)
    assert token["token"] not in str(listed) and org.token not in str(listed)

    revoked = await client.delete(f"/v2/admin-tokens/{token['id']}", headers=org.headers)
    assert revoked.status_code == 204
    refused = await client.get("/v2/gateways", headers=bearer(token["token"]))
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    listed = (await client.get("/v2/admin-tokens", headers=org.headers)).json()["items"]
    assert listed[1]["revoked_at"] is not None
    # Revoking again is harmless; an unknown id is 404.
    again = await client.delete(f"/v2/admin-tokens/{token['id']}", headers=org.headers)
    assert again.status_code == 204
    unknown = await client.delete(f"/v2/admin-tokens/{uuid.uuid4()}", headers=org.headers)
    assert unknown.status_code == 404


async def test_the_last_usable_token_cannot_be_revoked(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    first = (await client.get("/v2/admin-tokens", headers=org.headers)).json()["items"][0]
    last = await client.delete(f"/v2/admin-tokens/{first['id']}", headers=org.headers)
    assert last.status_code == 409
    assert "create another" in last.json()["detail"]
    assert (await client.get("/v2/gateways", headers=org.headers)).status_code == 200

    # With a second token, the first can go (and the caller may revoke its own token).
    second = (
        await client.post("/v2/admin-tokens", json={"name": "spare"}, headers=org.headers)
    ).json()
    assert (
        await client.delete(f"/v2/admin-tokens/{first['id']}", headers=org.headers)
    ).status_code == 204
    assert (await client.get("/v2/gateways", headers=org.headers)).status_code == 401
    assert (await client.get("/v2/gateways", headers=bearer(second["token"]))).status_code == 200


async def test_expired_tokens_are_refused(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    created = await client.post(
        "/v2/admin-tokens",
        json={"name": "contractor", "expires_at": soon.isoformat()},
        headers=org.headers,
    )
    assert created.status_code == 201
    token = created.json()
    assert dt.datetime.fromisoformat(token["expires_at"]) == soon
    assert (await client.get("/v2/gateways", headers=bearer(token["token"]))).status_code == 200

    # The hour passes (moved in the database, not waited for).
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute(
            "UPDATE admin_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(token["id"]),
        )
    finally:
        await conn.close()
    expired = await client.get("/v2/gateways", headers=bearer(token["token"]))
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "late", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "forever", "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "naive", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({}, "name"),
    ],
)
async def test_bad_token_requests_name_the_field(
    client: AsyncTestClient[Litestar], org: Org, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v2/admin-tokens", json=body, headers=org.headers)
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]


async def test_a_disabled_gateway_takes_no_commands_or_devices_until_enabled(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    gid = gateway["id"]
    device = (
        await client.post(
            "/v2/devices",
            json={
                "gateway_id": gid,
                "vendor": "hikvision",
                "name": "door",
                "host": "10.0.0.3",
                "port": 80,
                "username": "admin",
                "password": "pw",
            },
            headers=org.headers,
        )
    ).json()
    queued = (
        await client.post(
            f"/v2/gateways/{gid}/commands", json={"type": "ping"}, headers=org.headers
        )
    ).json()
    assert queued["status"] == "PENDING"

    disabled = await client.post(f"/v2/gateways/{gid}/disable", headers=org.headers)
    assert disabled.json()["disabled"] is True
    # What was waiting for it ends now, not at expiry.
    ended = await client.get(f"/v2/gateways/{gid}/commands/{queued['id']}", headers=org.headers)
    assert (ended.json()["status"], ended.json()["error"]) == (
        "CANCELED",
        "the gateway was disabled",
    )
    for path, body in (
        (f"/v2/gateways/{gid}/commands", {"type": "ping"}),
        (f"/v2/devices/{device['id']}/commands", {"type": "open_door"}),
        (
            "/v2/devices",
            {
                "gateway_id": gid,
                "vendor": "hikvision",
                "name": "door 2",
                "host": "10.0.0.4",
                "port": 80,
                "username": "admin",
                "password": "pw",
            },
        ),
    ):
        refused = await client.post(path, json=body, headers=org.headers)
        assert refused.status_code == 409, f"{path}: {refused.text}"
        assert refused.json()["error"] == "conflict"
        assert "disabled" in refused.json()["detail"]
    # Its key is refused at ingest on every instance.
    ingest = await client.post(
        "/v2/ingest/logs",
        json=batch({"pc": [log()]}),
        headers={"X-API-Key": gateway["api_key"]},
    )
    assert ingest.status_code == 401

    enabled = await client.post(f"/v2/gateways/{gid}/enable", headers=org.headers)
    assert enabled.json()["disabled"] is False
    accepted = await client.post(
        f"/v2/gateways/{gid}/commands", json={"type": "ping"}, headers=org.headers
    )
    assert accepted.status_code == 202
    ingest = await client.post(
        "/v2/ingest/logs",
        json=batch({"pc": [log()]}),
        headers={"X-API-Key": gateway["api_key"]},
    )
    assert ingest.status_code == 200


async def test_a_deleted_gateway_is_gone_but_its_logs_stay(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    stored = await client.post(
        "/v2/ingest/logs", json=batch({"pc": [log()]}), headers={"X-API-Key": gateway["api_key"]}
    )
    assert stored.status_code == 200
    deleted = await client.delete(f"/v2/gateways/{gateway['id']}", headers=org.headers)
    assert deleted.status_code == 204
    assert (
        await client.get(f"/v2/gateways/{gateway['id']}", headers=org.headers)
    ).status_code == 404
    assert (
        await client.delete(f"/v2/gateways/{gateway['id']}", headers=org.headers)
    ).status_code == 404
    refused = await client.post(
        "/v2/ingest/logs", json=batch({"pc": [log()]}), headers={"X-API-Key": gateway["api_key"]}
    )
    assert refused.status_code == 401
    # The records it uploaded are evidence: they stay until retention removes them.
    logs = (await client.get("/v2/logs", headers=org.headers)).json()["items"]
    assert len(logs) == 1


async def test_enrollment_key_rotation_shows_the_new_key_once(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    rotated = await client.post(
        f"/v2/gateways/{gateway['id']}/rotate-enrollment-key", headers=org.headers
    )
    assert rotated.status_code == 200
    key = rotated.json()["enrollment_key"]
    assert key.startswith("tde_") and key != gateway["enrollment_key"]
    shown = (await client.get(f"/v2/gateways/{gateway['id']}", headers=org.headers)).text
    assert key not in shown and gateway["enrollment_key"] not in shown
