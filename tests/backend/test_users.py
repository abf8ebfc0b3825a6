"""Users and personal tokens: bounds, owners, expiry and revocation, argon2id passwords."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import anyio
import asyncpg
import pytest
from argon2 import PasswordHasher
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.accounts import passwords
from backend.dashboard.session import COOKIE_NAME
from tests.backend.conftest import Org
from tests.backend.test_audit import PASSWORD, make_user
from tests.backend.test_isolation import Session, as_session

pytestmark = pytest.mark.anyio

WAIT_S = 30.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_user_bounds_duplicates_and_no_password_in_answers(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    ok = {"email": "Ada@Example.com", "name": "Ada", "role": "viewer", "password": PASSWORD}
    created = await client.post("/v2/users", json=ok, headers=org.headers)
    assert created.status_code == 201, created.text
    assert "password" not in created.text and PASSWORD not in created.text
    duplicate = await client.post(
        "/v2/users", json={**ok, "email": "ada@example.COM"}, headers=org.headers
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["detail"].startswith("email:")
    for field, value in (
        ("email", "not-an-address"),
        ("email", "a\x00@example.com"),
        ("email", "a" * 250 + "@example.com"),
        ("name", ""),
        ("name", "x" * 201),
        ("name", "nul\x00"),
        ("role", "root"),
        ("password", "short"),
        ("password", "p" * 257),
        ("password", "with a nul\x00 inside"),
    ):
        refused = await client.post("/v2/users", json={**ok, field: value}, headers=org.headers)
        assert refused.status_code == 400, (field, value, refused.text)
        assert field in refused.json()["detail"], refused.text
    listed = await client.get("/v2/users", headers=org.headers)
    assert [item["email"] for item in listed.json()["items"]] == ["Ada@Example.com"]
    assert "password" not in listed.text
    conn = await asyncpg.connect(migrated_url)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users")
    finally:
        await conn.close()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_owners_are_made_and_changed_only_by_owners_and_the_last_one_stays(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    owner = await make_user(client, org, "owner")
    admin = await make_user(client, org, "admin")
    as_admin = bearer(admin["token"])
    make_owner = {"email": "boss@example.com", "name": "b", "role": "owner"}
    refused = await client.post("/v2/users", json=make_owner, headers=as_admin)
    assert refused.status_code == 403 and "`owner`" in refused.json()["detail"]
    viewer = await make_user(client, org, "viewer")
    promote = await client.patch(
        f"/v2/users/{viewer['id']}", json={"role": "owner"}, headers=as_admin
    )
    assert promote.status_code == 403
    for call in (
        client.patch(f"/v2/users/{owner['id']}", json={"name": "x"}, headers=as_admin),
        client.delete(f"/v2/users/{owner['id']}", headers=as_admin),
        client.post(f"/v2/users/{owner['id']}/tokens", json={"name": "x"}, headers=as_admin),
    ):
        assert (await call).status_code == 403
    # The admin manages everyone else, tokens included.
    renamed = await client.patch(f"/v2/users/{viewer['id']}", json={"name": "V"}, headers=as_admin)
    assert renamed.status_code == 200 and renamed.json()["name"] == "V"
    minted = await client.post(
        f"/v2/users/{viewer['id']}/tokens", json={"name": "by admin"}, headers=as_admin
    )
    assert minted.status_code == 201

    as_owner = bearer(owner["token"])
    for change in ({"role": "admin"}, {"disabled": True}):
        last = await client.patch(f"/v2/users/{owner['id']}", json=change, headers=as_owner)
        assert last.status_code == 409 and "last owner" in last.json()["detail"], last.text
    assert (await client.delete(f"/v2/users/{owner['id']}", headers=as_owner)).status_code == 409
    second = await client.post("/v2/users", json=make_owner, headers=as_owner)
    assert second.status_code == 201
    demoted = await client.patch(
        f"/v2/users/{owner['id']}", json={"role": "viewer"}, headers=as_owner
    )
    assert demoted.status_code == 200 and demoted.json()["role"] == "viewer"
    # The demotion applies to the same token at once.
    now_viewer = await client.post("/v2/gateways", json={"name": "g"}, headers=as_owner)
    assert now_viewer.status_code == 403


async def test_anyone_manages_their_own_tokens_and_only_theirs(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    viewer = await make_user(client, org, "viewer")
    other = await make_user(client, org, "hr")
    mine = bearer(viewer["token"])
    created = await client.post(
        f"/v2/users/{viewer['id']}/tokens", json={"name": "laptop"}, headers=mine
    )
    assert created.status_code == 201 and created.json()["token"].startswith("tdu_")
    listed = await client.get(f"/v2/users/{viewer['id']}/tokens", headers=mine)
    assert [item["name"] for item in listed.json()["items"]] == ["t", "laptop"]
    assert "tdu_" not in listed.text
    for call in (
        client.post(f"/v2/users/{other['id']}/tokens", json={"name": "x"}, headers=mine),
        client.get(f"/v2/users/{other['id']}/tokens", headers=mine),
    ):
        assert (await call).status_code == 403
    revoked = await client.delete(
        f"/v2/users/{viewer['id']}/tokens/{created.json()['id']}", headers=mine
    )
    assert revoked.status_code == 204
    refused = await client.get("/v2/gateways", headers=bearer(created.json()["token"]))
    assert refused.status_code == 401
    assert (await client.get("/v2/gateways", headers=mine)).status_code == 200


async def test_tokens_expire(client: AsyncTestClient[Litestar], org: Org) -> None:
    user = await make_user(client, org, "viewer")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    created = await client.post(
        f"/v2/users/{user['id']}/tokens",
        json={"name": "short", "expires_at": soon.isoformat()},
        headers=org.headers,
    )
    assert created.status_code == 201
    token = bearer(created.json()["token"])
    assert (await client.get("/v2/users", headers=token)).status_code == 200
    deadline = time.monotonic() + WAIT_S
    while (response := await client.get("/v2/users", headers=token)).status_code == 200:
        assert time.monotonic() < deadline, "the token outlived its expiry"
        await anyio.sleep(0.1)
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    for expires_at in ("2020-01-01T00:00:00Z", "2030-01-01T00:00:00"):
        refused = await client.post(
            f"/v2/users/{user['id']}/tokens",
            json={"name": "x", "expires_at": expires_at},
            headers=org.headers,
        )
        assert refused.status_code == 400 and "expires_at" in refused.json()["detail"]


async def test_disabling_or_deleting_a_user_ends_their_tokens_and_sessions_at_once(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    for end in ("disable", "delete"):
        user = await make_user(client, org, "operator")
        session = Session(user["cookie"], "")
        assert (await as_session(client, "GET", "/dashboard/", session)).status_code == 200
        assert (await client.get("/v2/gateways", headers=bearer(user["token"]))).status_code == 200
        if end == "disable":
            ended = await client.patch(
                f"/v2/users/{user['id']}", json={"disabled": True}, headers=org.headers
            )
            assert ended.status_code == 200 and ended.json()["disabled"] is True
        else:
            ended = await client.delete(f"/v2/users/{user['id']}", headers=org.headers)
            assert ended.status_code == 204
        page = await as_session(client, "GET", "/dashboard/", session)
        assert page.status_code == 303 and page.headers["location"] == "/dashboard/sign-in"
        api = await client.get("/v2/gateways", headers=bearer(user["token"]))
        assert api.status_code == 401, f"{end}: {api.text}"
        client.cookies.clear()
        again = await client.post(
            "/dashboard/sign-in",
            data={"email": user["email"], "password": PASSWORD},
            follow_redirects=False,
        )
        assert again.status_code == 401, f"{end}: signed in again"
    # Enabling again brings back neither the revoked tokens nor the ended sessions.
    user = await make_user(client, org, "viewer")
    await client.patch(f"/v2/users/{user['id']}", json={"disabled": True}, headers=org.headers)
    await client.patch(f"/v2/users/{user['id']}", json={"disabled": False}, headers=org.headers)
    assert (await client.get("/v2/gateways", headers=bearer(user["token"]))).status_code == 401
    old_session = await as_session(client, "GET", "/dashboard/", Session(user["cookie"], ""))
    assert old_session.status_code == 303
    client.cookies.clear()
    fresh = await client.post(
        "/dashboard/sign-in",
        data={"email": user["email"], "password": PASSWORD},
        follow_redirects=False,
    )
    assert fresh.status_code == 303
    new_session = Session(fresh.cookies[COOKIE_NAME], "")
    assert (await as_session(client, "GET", "/dashboard/", new_session)).status_code == 200


def test_passwords_are_argon2id_and_verify() -> None:
    hashed = passwords.hash_password("a long password")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify(hashed, "a long password") == (True, None)
    assert passwords.verify(hashed, "another password") == (False, None)
    assert passwords.verify("not a hash", "a long password") == (False, None)
    assert passwords.verify(None, "a long password") == (False, None)


def test_a_hash_with_old_parameters_verifies_and_is_replaced() -> None:
    weaker = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    old = weaker.hash("a long password")
    ok, rehashed = passwords.verify(old, "a long password")
    assert ok and rehashed is not None and rehashed != old
    assert PasswordHasher().check_needs_rehash(rehashed) is False
    assert passwords.verify(rehashed, "a long password") == (True, None)


async def test_sign_in_rehashes_a_password_stored_with_old_parameters(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    user = await make_user(client, org, "hr")
    weaker = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            uuid.UUID(user["id"]),
            weaker.hash(PASSWORD),
        )

        async def stored() -> Any:
            return await conn.fetchval(
                "SELECT password_hash FROM users WHERE id = $1", uuid.UUID(user["id"])
            )

        assert "m=8192" in await stored()
        client.cookies.clear()
        signed_in = await client.post(
            "/dashboard/sign-in",
            data={"email": user["email"], "password": PASSWORD},
            follow_redirects=False,
        )
        assert signed_in.status_code == 303
        upgraded = await stored()
        assert upgraded.startswith("$argon2id$") and "m=8192" not in upgraded
        assert not PasswordHasher().check_needs_rehash(upgraded)
    finally:
        await conn.close()
    client.cookies.clear()
    wrong = await client.post(
        "/dashboard/sign-in",
        data={"email": user["email"], "password": PASSWORD + "!"},
        follow_redirects=False,
    )
    assert wrong.status_code == 401


async def test_users_and_their_tokens_page_in_creation_order(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    async def every_page(path: str) -> list[str]:
        names: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = await client.get(path, params=params, headers=org.headers)
            assert page.status_code == 200, page.text
            names += [item["name"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return names

    made = []
    for n in range(5):
        user = {"email": f"u{n}@example.com", "name": f"user {n}", "role": "viewer"}
        created = await client.post("/v2/users", json=user, headers=org.headers)
        assert created.status_code == 201, created.text
        made.append(created.json()["id"])
    assert await every_page("/v2/users") == [f"user {n}" for n in range(5)]
    for n in range(3):
        token = await client.post(
            f"/v2/users/{made[0]}/tokens", json={"name": f"t{n}"}, headers=org.headers
        )
        assert token.status_code == 201, token.text
    assert await every_page(f"/v2/users/{made[0]}/tokens") == ["t0", "t1", "t2"]
    broken = await client.get("/v2/users", params={"cursor": "not-a-cursor"}, headers=org.headers)
    assert broken.status_code == 400 and broken.json()["detail"].startswith("cursor:")
