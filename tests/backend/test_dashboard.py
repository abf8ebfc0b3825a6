"""The dashboard in-process: sessions, CSRF, organisation scoping, the policy form, charts.

The browser tests (tests/e2e/test_dashboard_browser.py) drive the same pages in chromium;
these check the rules a browser test would only catch by accident.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.dashboard.session import COOKIE_NAME
from tests.backend.conftest import Org, create_gateway

pytestmark = pytest.mark.anyio
Client = AsyncTestClient[Litestar]


@pytest.fixture
async def client(make_app: Any) -> AsyncIterator[Client]:
    """A client that shows redirects instead of following them (the cookie rules are in them)."""
    async with AsyncTestClient(app=make_app()) as test_client:
        test_client.follow_redirects = False
        yield test_client


async def sign_in(client: Client, org: Org) -> str:
    """Sign in with the org's token; returns the page's CSRF secret."""
    client.cookies.clear()
    response = await client.post("/dashboard/sign-in", data={"token": org.token})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard/"
    page = await client.get("/dashboard/")
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, "the page carries the CSRF secret for its forms"
    return match.group(1)


async def test_sign_in_sets_an_http_only_strict_cookie_without_the_token(
    client: Client, org: Org
) -> None:
    response = await client.post("/dashboard/sign-in", data={"token": org.token})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Path=/dashboard" in cookie
    assert org.token not in cookie
    assert org.token.split("_", 1)[1][:12] not in cookie
    today = await client.get("/dashboard/")
    assert today.status_code == 200
    assert "<h1>Today</h1>" in today.text
    # Never framed by another site, scripts only from this one.
    assert "frame-ancestors 'none'" in today.headers["content-security-policy"]
    assert "script-src 'self'" in today.headers["content-security-policy"]
    assert today.headers["x-frame-options"] == "DENY"


async def test_a_wrong_token_is_refused_on_the_form(client: Client, org: Org) -> None:
    response = await client.post("/dashboard/sign-in", data={"token": org.token[:-2] + "xx"})
    assert response.status_code == 401
    assert "not valid" in response.text
    assert COOKIE_NAME not in response.headers.get("set-cookie", "")
    too_long = await client.post("/dashboard/sign-in", data={"token": "tda_" + "a" * 5000})
    assert too_long.status_code == 401


async def test_sign_in_from_another_site_is_refused(client: Client, org: Org) -> None:
    response = await client.post(
        "/dashboard/sign-in", data={"token": org.token}, headers={"Origin": "https://evil.test"}
    )
    assert response.status_code == 403
    assert COOKIE_NAME not in response.headers.get("set-cookie", "")


async def test_pages_without_a_session_go_to_sign_in(client: Client) -> None:
    for path in ("/dashboard/", "/dashboard/fleet", "/dashboard/doors", "/dashboard/policies"):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/dashboard/sign-in"
    fragment = await client.get("/dashboard/fleet/rows", headers={"HX-Request": "true"})
    assert fragment.status_code == 401
    assert fragment.headers["hx-redirect"] == "/dashboard/sign-in"


async def test_a_forged_or_tampered_cookie_is_no_session(client: Client, org: Org) -> None:
    await sign_in(client, org)
    value = client.cookies[COOKIE_NAME]
    for forged in (value[:-4] + "AAAA", "x" * 5000, "not-a-token"):
        client.cookies.clear()
        client.cookies.set(COOKIE_NAME, forged, path="/dashboard")
        response = await client.get("/dashboard/fleet")
        assert response.status_code == 303, forged[:20]


@pytest.mark.parametrize(
    "ending", ["revoked_at = now()", "expires_at = now() - interval '1 second'"]
)
async def test_revoking_or_expiring_the_token_ends_the_session(
    client: Client, org: Org, migrated_url: str, ending: str
) -> None:
    await sign_in(client, org)
    assert (await client.get("/dashboard/fleet")).status_code == 200
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute(f"UPDATE admin_tokens SET {ending} WHERE org_id = $1", uuid.UUID(org.id))
    finally:
        await conn.close()
    response = await client.get("/dashboard/fleet")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/sign-in"


async def test_sign_out_needs_the_csrf_secret_and_clears_the_cookie(
    client: Client, org: Org
) -> None:
    csrf = await sign_in(client, org)
    forged = await client.post("/dashboard/sign-out", data={"csrf_token": "guess"})
    assert forged.status_code == 403
    assert (await client.get("/dashboard/fleet")).status_code == 200
    response = await client.post("/dashboard/sign-out", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert (
        'td_session=""' in response.headers["set-cookie"]
        or "Max-Age=0" in response.headers["set-cookie"]
    )
    assert (await client.get("/dashboard/fleet")).status_code == 303


async def test_commands_need_the_csrf_secret(client: Client, org: Org) -> None:
    gateway = await create_gateway(client, org)
    csrf = await sign_in(client, org)
    path = f"/dashboard/fleet/{gateway['id']}/commands"
    refused = await client.post(path, data={"type": "ping"}, headers={"HX-Request": "true"})
    assert refused.status_code == 403
    listed = await client.get(f"/v2/gateways/{gateway['id']}/commands", headers=org.headers)
    assert listed.json()["items"] == []
    accepted = await client.post(
        path, data={"type": "ping"}, headers={"HX-Request": "true", "X-CSRF-Token": csrf}
    )
    assert accepted.status_code == 200, accepted.text
    assert 'data-command-type="ping"' in accepted.text
    assert 'data-status="PENDING"' in accepted.text
    listed = await client.get(f"/v2/gateways/{gateway['id']}/commands", headers=org.headers)
    assert [c["type"] for c in listed.json()["items"]] == ["ping"]
    unknown = await client.post(path, data={"type": "rm -rf", "csrf_token": csrf})
    assert unknown.status_code == 400
    assert "type: one of ping, flush, restart" in unknown.text


async def test_another_organisations_rows_are_not_found(
    client: Client, org: Org, new_org: Any
) -> None:
    gateway = await create_gateway(client, org)
    other = await new_org("other")
    csrf = await sign_in(client, other)
    fleet = await client.get("/dashboard/fleet")
    assert gateway["id"] not in fleet.text
    page = await client.get(f"/dashboard/fleet/{gateway['id']}")
    assert page.status_code == 404
    command = await client.post(
        f"/dashboard/fleet/{gateway['id']}/commands", data={"type": "ping", "csrf_token": csrf}
    )
    assert command.status_code == 404
    listed = await client.get(f"/v2/gateways/{gateway['id']}/commands", headers=org.headers)
    assert listed.json()["items"] == []


async def _policy(client: Client, org: Org) -> dict[str, Any]:
    created = await client.post(
        "/v2/policies",
        json={"name": "office", "body": {"idle_threshold_s": 300, "blocked_apps": ["game.exe"]}},
        headers=org.headers,
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def _form(csrf: str, revision: int, **changes: str) -> dict[str, str]:
    fields = {
        "csrf_token": csrf,
        "revision": str(revision),
        "name": "office",
        "idle_threshold_s": "300",
        "upload_interval_s": "60",
        "log_batch_max": "500",
        "track_titles": "on",
        "blocked_apps": "game.exe",
        "blocked_domains": "",
        "working_hours": "",
    }
    return {**fields, **changes}


async def test_policy_form_errors_are_shown_at_the_field_and_nothing_is_saved(
    client: Client, org: Org
) -> None:
    policy = await _policy(client, org)
    csrf = await sign_in(client, org)
    path = f"/dashboard/policies/{policy['id']}"
    for changes, field, words in (
        ({"idle_threshold_s": "5"}, "idle_threshold_s", "must be at least 10"),
        ({"upload_interval_s": "soon"}, "upload_interval_s", "a whole number"),
        ({"working_hours": "Mon 09:00-17:00\nFunday 9-5"}, "working_hours", "line 2"),
        ({"working_hours": "Tue 18:00-09:00"}, "working_hours", "end must be after start"),
        ({"blocked_apps": "x" * 300}, "blocked_apps", "longer than 256"),
        ({"name": ""}, "name", "between 1 and 200"),
    ):
        response = await client.post(path, data=_form(csrf, 1, **changes))
        assert response.status_code == 400, (changes, response.text[:200])
        error = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)</p>', response.text)
        assert error, (field, response.text)
        assert words in error.group(1)
        assert f'aria-describedby="{field}-error"' in response.text
    current = await client.get(f"/v2/policies/{policy['id']}", headers=org.headers)
    assert current.json()["revision"] == 1


async def test_policy_form_saves_a_revision_and_refuses_a_stale_one(
    client: Client, org: Org
) -> None:
    policy = await _policy(client, org)
    csrf = await sign_in(client, org)
    path = f"/dashboard/policies/{policy['id']}"
    saved = await client.post(
        path,
        data=_form(
            csrf,
            1,
            idle_threshold_s="120",
            track_titles="",
            working_hours="Mon 09:00-17:00\nfri 10:00-12:00",
        ),
    )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == f"{path}?saved=2"
    body = (await client.get(f"/v2/policies/{policy['id']}", headers=org.headers)).json()
    assert body["revision"] == 2
    assert body["body"]["idle_threshold_s"] == 120
    assert body["body"]["track_titles"] is False
    assert body["body"]["working_hours"] == [
        {"weekday": 0, "start": "09:00", "end": "17:00"},
        {"weekday": 4, "start": "10:00", "end": "12:00"},
    ]
    stale = await client.post(path, data=_form(csrf, 1, idle_threshold_s="99"))
    assert stale.status_code == 400
    assert "someone saved revision 2 meanwhile" in stale.text
    assert (await client.get(f"/v2/policies/{policy['id']}", headers=org.headers)).json()[
        "revision"
    ] == 2


async def test_rollback_shows_what_changes_then_saves_the_old_settings(
    client: Client, org: Org
) -> None:
    policy = await _policy(client, org)
    csrf = await sign_in(client, org)
    path = f"/dashboard/policies/{policy['id']}"
    await client.post(path, data=_form(csrf, 1, idle_threshold_s="120", blocked_apps=""))
    preview = await client.get(f"{path}/rollback/1")
    assert preview.status_code == 200
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"wrap\"><del>([^<]*)</del>", preview.text)
    assert rows == [("Idle after (seconds)", "120"), ("Apps not recorded", "none")]
    assert "<ins>game.exe</ins>" in preview.text
    assert (await client.get(f"{path}/rollback/9")).status_code == 404
    done = await client.post(f"{path}/rollback/1", data={"csrf_token": csrf})
    assert done.status_code == 303
    body = (await client.get(f"/v2/policies/{policy['id']}", headers=org.headers)).json()
    assert body["revision"] == 3
    assert body["body"]["idle_threshold_s"] == 300
    assert body["body"]["blocked_apps"] == ["game.exe"]


async def test_gateway_page_charts_its_status_reports(
    client: Client, org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    conn = await asyncpg.connect(migrated_url)
    try:
        now = dt.datetime.now(dt.UTC)
        for minutes, cpu in ((50, 10.0), (30, 55.0), (5, 90.0)):
            data = {
                "type": "status",
                "ts": (now - dt.timedelta(minutes=minutes)).isoformat(),
                "cpu_percent": cpu,
                "memory_percent": 40.0,
                "disk_free_bytes": 250,
                "disk_total_bytes": 1000,
                "buffer": {"queue_depth": minutes},
            }
            await conn.execute(
                "INSERT INTO gateway_status_snapshots (gateway_id, org_id, ts, received_at, data)"
                " VALUES ($1, $2, $3, $3, $4)",
                uuid.UUID(gateway["id"]),
                uuid.UUID(org.id),
                now - dt.timedelta(minutes=minutes),
                json.dumps(data),
            )
    finally:
        await conn.close()
    await sign_in(client, org)
    page = await client.get(f"/dashboard/fleet/{gateway['id']}")
    assert page.status_code == 200
    assert "(3 reports)" in page.text
    assert page.text.count("<polyline") == 4
    assert 'aria-label="CPU, latest 90%"' in page.text
    assert 'aria-label="Disk used, latest 75%"' in page.text
    day = await client.get(f"/dashboard/fleet/{gateway['id']}?range=day")
    assert day.status_code == 200
    bad = await client.get(f"/dashboard/fleet/{gateway['id']}?range=year")
    assert bad.status_code == 400


async def test_a_report_of_the_wrong_shape_shows_dashes_not_an_error(
    client: Client, org: Org, migrated_url: str
) -> None:
    gateway = await create_gateway(client, org)
    conn = await asyncpg.connect(migrated_url)
    try:
        await conn.execute(
            "UPDATE gateway_instances SET last_status = $2 WHERE id = $1",
            uuid.UUID(gateway["id"]),
            json.dumps({"buffer": {"queue_depth": "lots", "dropped_total": True}, "fault": 5}),
        )
        await conn.execute(
            "INSERT INTO gateway_status_snapshots (gateway_id, org_id, ts, data)"
            " VALUES ($1, $2, now(), $3)",
            uuid.UUID(gateway["id"]),
            uuid.UUID(org.id),
            json.dumps({"cpu_percent": "high", "buffer": [1], "disk_total_bytes": {}}),
        )
    finally:
        await conn.close()
    await sign_in(client, org)
    fleet = await client.get("/dashboard/fleet")
    assert fleet.status_code == 200
    row = re.search(r'<tr data-gateway="gw">(.*?)</tr>', fleet.text, re.S)
    assert row and row.group(1).count('<td class="num">—</td>') == 5
    page = await client.get(f"/dashboard/fleet/{gateway['id']}")
    assert page.status_code == 200
    assert 'aria-label="CPU, latest 0%"' in page.text
