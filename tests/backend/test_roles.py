"""Every changing route, called as every role, answers as docs/accounts.md says it does.

The walk takes the routes from the app's own route table (API and dashboard), so a new route
fails here until it declares a permission and the docs list it with the roles allowed. Each
call is aimed at nothing (random ids, empty bodies): a role the route allows gets past the
check (400, 404, …) and a role it refuses gets 403 before anything is read.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from backend.accounts.roles import ROLES
from backend.app import create_app
from backend.config import load_config
from backend.dashboard.session import COOKIE_NAME
from backend.routes.common import permission_of
from tests.backend.conftest import Org
from tests.backend.test_isolation import Session, as_session

DOCS = Path(__file__).parents[2] / "docs" / "accounts.md"
ROW = re.compile(r"^\| `([A-Z]+)` \| `([^`]+)` \| (\w+) \|(.*)\|$")
# Authenticated by the gateway's key, not by a user (their own tests cover them).
GATEWAY_ROUTES = {("POST", "/v2/ingest/logs"), ("POST", "/v2/gateways/enroll")}
READING = {"GET", "HEAD", "OPTIONS"}
PASSWORD = "correct horse battery"
# The admin token acts as the organisation's owner.
ADMIN_TOKEN = "admin_token"


def documented() -> dict[tuple[str, str], dict[str, bool]]:
    """(method, path) -> role -> allowed, from the table in docs/accounts.md."""
    lines = DOCS.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method | path | permission |"))
    roles = [cell.strip() for cell in header.strip("|").split("|")][3:]
    assert roles == list(ROLES), f"the docs' role columns: {roles}"
    table: dict[tuple[str, str], dict[str, bool]] = {}
    for line in lines:
        match = ROW.match(line)
        if match is None:
            continue
        cells = [cell.strip() for cell in match.group(4).split("|")]
        assert set(cells) <= {"yes", "no"}, line
        key = (match.group(1), match.group(2))
        assert key not in table, f"listed twice: {line}"
        table[key] = {role: cell == "yes" for role, cell in zip(roles, cells, strict=True)}
    return table


def changing_routes(app: Litestar) -> list[tuple[str, str, Any]]:
    found = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for method, (handler, _) in route.route_handler_map.items():
                if method not in READING:
                    found.append((method, route.path, handler))
    return sorted(found, key=lambda item: (item[1], item[0]))


def fill(path: str) -> str:
    """Ids of nothing: the call gets past the role check and stops at the lookup."""

    def one(match: re.Match[str]) -> str:
        return "1" if match.group(2) == "int" else str(uuid.uuid4())

    return re.sub(r"\{(\w+):(\w+)\}", one, path)


def test_every_changing_route_declares_a_permission_and_is_in_the_docs(tmp_path: Path) -> None:
    config = load_config(
        {}, database_url="postgresql://unused@127.0.0.1/unused", data_dir=str(tmp_path)
    )
    app = create_app(config)
    table = documented()
    routes = {(method, path): handler for method, path, handler in changing_routes(app)}
    assert len(routes) >= 40, sorted(routes)
    for (method, path), handler in routes.items():
        if (method, path) in GATEWAY_ROUTES:
            continue
        assert permission_of(handler, method) is not None, f"{method} {path}: needs(...)"
        assert (method, path) in table, f"{method} {path}: add it to docs/accounts.md"
    stale = set(table) - set(routes)
    assert not stale, f"docs/accounts.md lists routes the app does not have: {stale}"


async def _role_users(client: AsyncTestClient[Litestar], org: Org) -> dict[str, dict[str, str]]:
    """A user of each role with a personal token and a dashboard session."""
    users = {}
    for role in ROLES:
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        created = await client.post(
            "/v2/users",
            json={"email": email, "name": role, "role": role, "password": PASSWORD},
            headers=org.headers,
        )
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        token = await client.post(
            f"/v2/users/{user_id}/tokens", json={"name": f"{role}-token"}, headers=org.headers
        )
        assert token.status_code == 201, token.text
        client.cookies.clear()
        signed_in = await client.post(
            "/dashboard/sign-in",
            data={"email": email.upper(), "password": PASSWORD},
            follow_redirects=False,
        )
        assert signed_in.status_code == 303, signed_in.text
        cookie = signed_in.cookies[COOKIE_NAME]
        client.cookies.clear()
        landing = await as_session(client, "GET", "/dashboard/", Session(cookie, ""))
        assert landing.status_code == 200, landing.text
        assert email in landing.text, "the page says who is signed in"
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', landing.text)
        assert csrf
        users[role] = {
            "id": user_id,
            "token": token.json()["token"],
            "cookie": cookie,
            "csrf": csrf.group(1),
        }
    return users


@pytest.mark.anyio
async def test_each_role_gets_what_the_docs_table_says_on_every_changing_route(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    table = documented()
    users = await _role_users(client, org)
    callers = [*ROLES, ADMIN_TOKEN]
    walked = 0
    for method, template, _ in changing_routes(client.app):
        if (method, template) in GATEWAY_ROUTES:
            continue
        allowed = table[(method, template)]
        path = fill(template)
        for caller in callers:
            expect_allowed = allowed["owner" if caller == ADMIN_TOKEN else caller]
            if template.startswith("/dashboard"):
                if caller == ADMIN_TOKEN:
                    continue
                session = Session(users[caller]["cookie"], users[caller]["csrf"])
                response = await as_session(client, method, path, session, form={})
            else:
                token = org.token if caller == ADMIN_TOKEN else users[caller]["token"]
                headers = {"Authorization": f"Bearer {token}"}
                body = {} if method in {"POST", "PUT", "PATCH"} else None
                response = await client.request(method, path, headers=headers, json=body)
                if response.status_code == 403:
                    problem = response.json()
                    assert problem["error"] == "forbidden", response.text
                    allowed_roles = [role for role in ROLES if allowed[role]]
                    for role in allowed_roles:
                        assert f"`{role}`" in problem["detail"], response.text
            refused = response.status_code == 403
            assert refused != expect_allowed, (
                f"{method} {template} as {caller}: {response.status_code} {response.text[:200]}"
                f" but docs/accounts.md says {'yes' if expect_allowed else 'no'}"
            )
            assert response.status_code < 500, f"{method} {template}: {response.text[:200]}"
            walked += 1
    assert walked >= 40 * len(ROLES)


@pytest.mark.anyio
async def test_a_viewer_changes_nothing_and_sees_no_changing_buttons(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    users = await _role_users(client, org)
    gateway = await client.post("/v2/gateways", json={"name": "gw"}, headers=org.headers)
    policy = await client.post("/v2/policies", json={"name": "p", "body": {}}, headers=org.headers)
    viewer = Session(users["viewer"]["cookie"], users["viewer"]["csrf"])
    operator = Session(users["operator"]["cookie"], users["operator"]["csrf"])
    pages = {
        f"/dashboard/fleet/{gateway.json()['id']}": 'hx-post="/dashboard/fleet/',
        "/dashboard/people": 'method="post" action="/dashboard/people"',
        f"/dashboard/policies/{policy.json()['id']}": "Save as a new revision",
    }
    for path, button in pages.items():
        seen_by_viewer = await as_session(client, "GET", path, viewer)
        assert seen_by_viewer.status_code == 200, seen_by_viewer.text
        assert button not in seen_by_viewer.text, f"{path} offers a viewer {button!r}"
        seen_by_owner = await as_session(
            client, "GET", path, Session(users["owner"]["cookie"], users["owner"]["csrf"])
        )
        assert button in seen_by_owner.text, f"{path}: the owner's page lacks {button!r}"
    # The operator runs commands but cannot edit a policy.
    fleet = await as_session(client, "GET", f"/dashboard/fleet/{gateway.json()['id']}", operator)
    assert 'hx-post="/dashboard/fleet/' in fleet.text
    refused = await as_session(
        client,
        "POST",
        f"/dashboard/fleet/{gateway.json()['id']}/commands",
        viewer,
        {"type": "ping"},
    )
    assert refused.status_code == 403
    commands = await client.get(
        f"/v2/gateways/{gateway.json()['id']}/commands", headers=org.headers
    )
    assert commands.json()["items"] == [], "the viewer's refused command was queued anyway"


@pytest.mark.anyio
async def test_hr_sets_the_time_zone_but_not_how_gateways_prove_themselves(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    users = await _role_users(client, org)

    async def change(role: str, body: dict[str, Any]) -> Any:
        headers = {"Authorization": f"Bearer {users[role]['token']}"}
        return await client.patch("/v2/organization", json=body, headers=headers)

    assert (await change("hr", {"time_zone": "Europe/Berlin"})).status_code == 200
    refused = await change("hr", {"require_client_certificate": True})
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("require_client_certificate:")
    assert "`admin`" in refused.json()["detail"]
    settings = await client.get("/v2/organization", headers=org.headers)
    assert settings.json()["require_client_certificate"] is False
    # The route needs `people` and the field `fleet`: only the owner holds both.
    allowed = await change("owner", {"require_client_certificate": True})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["require_client_certificate"] is True
