"""The audit trail: every change through every route lands in /v2/audit with its author, in
the change's transaction, and nothing (no route, no SQL) alters or removes an event."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from backend.accounts.actor import Actor
from backend.audit import AuditOutsideTransaction, NoActor, record
from backend.dashboard.session import COOKIE_NAME
from tests.backend.conftest import Org
from tests.backend.test_isolation import (
    SIGN_OUT,
    Session,
    as_session,
    bodies,
    dashboard_forms,
    dashboard_paths,
    fill,
    org_a_history,
    org_a_resources,
    send,
)
from tests.backend.test_roles import GATEWAY_ROUTES, READING, changing_routes

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"


async def make_user(
    client: AsyncTestClient[Litestar], org: Org, role: str, email: str | None = None
) -> dict[str, str]:
    """A user of `role` with a personal token (`token`) and a dashboard session."""
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    created = await client.post(
        "/v2/users",
        json={"email": email, "name": role, "role": role, "password": PASSWORD},
        headers=org.headers,
    )
    assert created.status_code == 201, created.text
    token = await client.post(
        f"/v2/users/{created.json()['id']}/tokens", json={"name": "t"}, headers=org.headers
    )
    assert token.status_code == 201, token.text
    client.cookies.clear()
    signed_in = await client.post(
        "/dashboard/sign-in", data={"email": email, "password": PASSWORD}, follow_redirects=False
    )
    assert signed_in.status_code == 303, signed_in.text
    return {
        "id": created.json()["id"],
        "email": email,
        "token": token.json()["token"],
        "cookie": signed_in.cookies[COOKIE_NAME],
    }


async def session_of(client: AsyncTestClient[Litestar], user: dict[str, str]) -> Session:
    landing = await as_session(client, "GET", "/dashboard/", Session(user["cookie"], ""))
    assert landing.status_code == 200, landing.text
    marker = 'name="csrf_token" value="'
    start = landing.text.index(marker) + len(marker)
    return Session(user["cookie"], landing.text[start : landing.text.index('"', start)])


async def audit_rows(url: str, org_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT *, changes::text AS changes FROM audit_events WHERE org_id = $1"
            " ORDER BY at, id",
            uuid.UUID(org_id),
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


async def all_pages(
    client: AsyncTestClient[Litestar], org: Org, **params: str
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": "7", **({"cursor": cursor} if cursor else {})}
        page = await client.get("/v2/audit", params=query, headers=org.headers)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


async def test_every_change_through_every_route_is_in_the_audit_with_its_author(
    client: AsyncTestClient[Litestar], new_org: Any, migrated_url: str
) -> None:
    a = await new_org("a")
    owner = await make_user(client, a, "owner")
    history = await org_a_history(client, a, migrated_url)
    session = await session_of(client, owner)
    actions: set[str] = set()
    untouched = await audit_rows(migrated_url, a.id)
    walked = 0
    for method, template, _ in changing_routes(client.app):
        if (method, template) in GATEWAY_ROUTES or template in (SIGN_OUT, "/dashboard/sign-in"):
            continue
        ids = {**history, **await org_a_resources(client, a)}
        before = {row["id"] for row in await audit_rows(migrated_url, a.id)}
        if template.startswith("/dashboard"):
            form = dashboard_forms(ids)[(method, template)]
            path = dashboard_paths(template, ids)[0]
            response = await as_session(client, method, path, session, form)
            assert response.status_code in (200, 303), f"{method} {path}: {response.text[:300]}"
            assert "sign-in" not in response.headers.get("location", "")
        else:
            route_ids = dict(ids)
            if "/devices/" in template and "command_id" in template:
                route_ids["command_id"] = ids["device_command_id"]
            if "/users/" in template and "token_id" in template:
                route_ids["token_id"] = ids["user_token_id"]
            headers = {"Authorization": f"Bearer {owner['token']}"}
            response = await send(
                client,
                method,
                fill(template, route_ids),
                bodies(ids).get((method, template)),
                headers,
            )
            assert response.is_success, f"{method} {template}: {response.text[:300]}"
        new = [row for row in await audit_rows(migrated_url, a.id) if row["id"] not in before]
        assert new, f"{method} {template} changed something and left no audit event"
        for row in new:
            assert (row["actor_kind"], row["actor_label"], row["role"]) == (
                "user",
                owner["email"],
                "owner",
            ), f"{method} {template}: {row}"
            assert row["actor_id"] == uuid.UUID(owner["id"])
            assert row["remote_address"], f"{method} {template}: no remote address"
            assert PASSWORD not in row["changes"] and "a-secret" not in row["changes"]
            actions.add(row["action"])
        walked += 1
    assert walked >= 40
    assert {"policy.update", "device_command.create", "user.delete", "device.adopt"} <= actions

    # What the walk wrote is what the API shows, page by page, and in the CSV.
    mine = [
        row for row in await audit_rows(migrated_url, a.id) if row["actor_label"] == owner["email"]
    ]
    listed = await all_pages(client, a, actor=owner["email"])
    assert [item["id"] for item in listed] == [str(row["id"]) for row in mine]
    assert all(item["actor"]["label"] == owner["email"] for item in listed)
    by_id = await all_pages(client, a, actor=owner["id"])
    assert [item["id"] for item in by_id] == [item["id"] for item in listed]
    exported = await client.get(
        "/v2/audit.csv", params={"actor": owner["email"]}, headers=a.headers
    )
    assert exported.status_code == 200
    assert exported.text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
    assert [row["action"] for row in rows] == [item["action"] for item in listed]

    # No route altered or removed an event that existed before the walk.
    after = {row["id"]: row for row in await audit_rows(migrated_url, a.id)}
    for row in untouched:
        assert after.get(row["id"]) == row, f"audit event {row['id']} changed"


async def test_no_route_writes_to_the_audit_trail(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    audit_routes = [
        (method, route.path)
        for route in client.app.routes
        if isinstance(route, HTTPRoute) and "audit" in route.path
        for method in route.methods
    ]
    assert {m for m, _ in audit_routes} <= READING, audit_routes
    assert {p for _, p in audit_routes} == {"/v2/audit", "/v2/audit.csv"}
    await client.post("/v2/gateways", json={"name": "gw"}, headers=org.headers)
    [event] = await audit_rows(migrated_url, org.id)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/v2/audit", f"/v2/audit/{event['id']}", "/v2/audit.csv"):
            response = await client.request(method, path, headers=org.headers, json={})
            assert response.status_code in (404, 405), f"{method} {path}: {response.status_code}"
    assert await audit_rows(migrated_url, org.id) == [event]


async def test_sql_cannot_update_delete_or_truncate_audit_events(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    await client.post("/v2/gateways", json={"name": "gw"}, headers=org.headers)
    before = await audit_rows(migrated_url, org.id)
    assert len(before) == 1
    conn = await asyncpg.connect(migrated_url)
    try:
        for statement in (
            "UPDATE audit_events SET actor_label = 'someone else'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()
    assert await audit_rows(migrated_url, org.id) == before


async def test_an_event_commits_with_its_change_or_not_at_all(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    actor = Actor(uuid.UUID(org.id), "cli", None, "test", "owner")
    conn = await asyncpg.connect(migrated_url)
    try:
        with pytest.raises(AuditOutsideTransaction):
            await record(conn, "x.y", "x", None, actor=actor)
        with pytest.raises(NoActor):
            async with conn.transaction():
                await record(conn, "x.y", "x", None)
        with pytest.raises(RuntimeError, match="rolled back"):
            async with conn.transaction():
                await record(conn, "x.y", "x", None, actor=actor)
                raise RuntimeError("rolled back")
    finally:
        await conn.close()
    assert await audit_rows(migrated_url, org.id) == []
    # A refused change through the API leaves no event either.
    first = await client.post(
        "/v2/employees", json={"employee_no": "7", "name": "a"}, headers=org.headers
    )
    assert first.status_code == 201
    again = await client.post(
        "/v2/employees", json={"employee_no": "7", "name": "b"}, headers=org.headers
    )
    assert again.status_code == 409
    assert [row["action"] for row in await audit_rows(migrated_url, org.id)] == ["employee.create"]


async def test_filters_paging_and_csv_escaping(
    client: AsyncTestClient[Litestar], org: Org, migrated_url: str
) -> None:
    sly = await make_user(client, org, "admin", email="=cmd@example.com")
    start = dt.datetime.now(dt.UTC)
    sly_headers = {"Authorization": f"Bearer {sly['token']}"}
    gateways = []
    for n in range(3):
        created = await client.post("/v2/gateways", json={"name": f"g{n}"}, headers=sly_headers)
        assert created.status_code == 201
        gateways.append(created.json()["id"])
    await client.post(f"/v2/gateways/{gateways[0]}/disable", headers=org.headers)

    by_sly = await all_pages(client, org, actor="=CMD@example.com", since=start.isoformat())
    assert [item["target_id"] for item in by_sly] == gateways
    assert {item["actor"]["role"] for item in by_sly} == {"admin"}
    disabled = await all_pages(client, org, action="gateway.disable")
    assert [(item["target_id"], item["actor"]["kind"]) for item in disabled] == [
        (gateways[0], "admin_token")
    ]
    assert disabled[0]["actor"]["label"] == "initial"
    one = await all_pages(client, org, target_type="gateway", target_id=gateways[1])
    assert [item["action"] for item in one] == ["gateway.create"]
    assert one[0]["changes"] == {"before": None, "after": {"name": "g1"}}
    until = await all_pages(client, org, until=start.isoformat())
    assert {item["action"] for item in until} == {"user.create", "user_token.create"}

    for params in ({"since": "2026-01-01T00:00:00"}, {"actor": "x\x00"}, {"cursor": "nope"}):
        refused = await client.get("/v2/audit", params=params, headers=org.headers)
        assert refused.status_code == 400, params
        assert refused.json()["error"] == "invalid_request"

    exported = await client.get(
        "/v2/audit.csv", params={"action": "gateway.create"}, headers=org.headers
    )
    rows = list(csv.reader(io.StringIO(exported.text.lstrip("\ufeff"))))
    assert rows[0][:4] == ["at", "actor_kind", "actor_id", "actor"]
    # A label a spreadsheet would run as a formula stays text.
    assert [row[3] for row in rows[1:]] == ["'=cmd@example.com"] * 3


async def test_policy_history_shows_author_and_changeset(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    admin = await make_user(client, org, "admin")
    created = await client.post(
        "/v2/policies",
        json={"name": "office", "body": {"idle_threshold_s": 120}},
        headers={"Authorization": f"Bearer {admin['token']}"},
    )
    policy_id = created.json()["id"]
    changed = await client.put(
        f"/v2/policies/{policy_id}", json={"body": {"idle_threshold_s": 300}}, headers=org.headers
    )
    assert changed.status_code == 200
    revisions = (
        await client.get(f"/v2/policies/{policy_id}/revisions", headers=org.headers)
    ).json()["items"]
    assert [(r["revision"], r["author"]["label"]) for r in revisions] == [
        (2, "initial"),
        (1, admin["email"]),
    ]
    assert revisions[1]["author"]["role"] == "admin"
    change = revisions[0]["changes"]
    assert change["before"]["body"]["idle_threshold_s"] == 120
    assert change["after"]["body"]["idle_threshold_s"] == 300
    assert (change["before"]["revision"], change["after"]["revision"]) == (1, 2)
    # The dashboard's policy page names each revision's author too.
    page = await as_session(
        client, "GET", f"/dashboard/policies/{policy_id}", Session(admin["cookie"], "")
    )
    assert page.status_code == 200
    assert f"<td>{admin['email']}</td>" in page.text and "<td>initial</td>" in page.text
