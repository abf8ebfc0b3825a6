"""Sign-in through the organisation's OpenID Connect provider, against a small provider
served on 127.0.0.1 (the identity provider is a boundary we do not own): discovery, JWKS,
/authorize and /token, its id_tokens signed with a key made here."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from litestar import Litestar
from litestar.testing import AsyncTestClient

from backend.dashboard.session import COOKIE_NAME
from backend.oidc.pages import ATTEMPT_COOKIE
from tests.backend.conftest import Org
from tests.backend.test_audit import audit_rows, make_user

pytestmark = pytest.mark.anyio

CLIENT_ID = "td-dashboard"
CLIENT_SECRET = "provider-Secret-9173"


@dataclass
class Provider:
    """What the provider signs with and says; tests change it between sign-ins."""

    issuer: str = ""
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, {"kid": "k1"}))
    # Signs instead of `key` while still publishing `key` (a forged token).
    signer: Any = None
    claims: dict[str, Any] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    token_requests: int = 0


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/.well-known/openid-configuration":
                self._json(
                    200,
                    {
                        "issuer": provider.issuer,
                        "authorization_endpoint": provider.issuer + "/authorize",
                        "token_endpoint": provider.issuer + "/token",
                        "jwks_uri": provider.issuer + "/jwks",
                    },
                )
            elif url.path == "/jwks":
                self._json(200, {"keys": [provider.key.as_dict(private=False)]})
            elif url.path == "/authorize":
                query = dict(urllib.parse.parse_qsl(url.query))
                code = uuid.uuid4().hex
                provider.codes[code] = query
                back = (
                    query["redirect_uri"]
                    + "?"
                    + urllib.parse.urlencode({"code": code, "state": query["state"]})
                )
                self.send_response(302)
                self.send_header("Location", back)
                self.end_headers()
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            provider.token_requests += 1
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {expected}":
                self._json(401, {"error": "invalid_client"})
                return
            asked = provider.codes.pop(form.get("code", ""), None)
            if asked is None or asked["redirect_uri"] != form.get("redirect_uri"):
                self._json(400, {"error": "invalid_grant"})
                return
            # PKCE: the verifier must hash to the challenge /authorize was given.
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if asked.get("code_challenge_method") != "S256" or challenge != asked.get(
                "code_challenge"
            ):
                self._json(400, {"error": "invalid_grant", "error_description": "pkce"})
                return
            now = int(time.time())
            claims = {
                "iss": provider.issuer,
                "aud": CLIENT_ID,
                "sub": "subject-1",
                "iat": now,
                "exp": now + 300,
                "nonce": asked["nonce"],
                **provider.claims,
            }
            claims = {name: value for name, value in claims.items() if value is not None}
            signer = provider.signer or provider.key
            header = {"alg": "RS256" if isinstance(signer, RSAKey) else "ES256", "kid": "k1"}
            id_token = jwt.encode(header, claims, signer)
            self._json(
                200,
                {"access_token": "at", "token_type": "Bearer", "id_token": id_token},
            )

    return Handler


@pytest.fixture
def provider() -> Iterator[Provider]:
    state = Provider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def configure(client: AsyncTestClient[Litestar], org: Org, provider: Provider) -> None:
    settings = {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    put = await client.put("/v2/organization/oidc", json=settings, headers=org.headers)
    assert put.status_code == 200, put.text


async def sign_in_through_provider(client: AsyncTestClient[Litestar], org: Org) -> httpx.Response:
    """Start, follow the provider's /authorize, and land on the callback, as a browser."""
    client.cookies.clear()
    start = await client.get(
        "/dashboard/oidc/start", params={"org": org.id}, follow_redirects=False
    )
    assert start.status_code == 303, start.text
    assert ATTEMPT_COOKIE in start.cookies
    async with httpx.AsyncClient() as browser:
        authorized = await browser.get(start.headers["location"], follow_redirects=False)
    assert authorized.status_code == 302
    back = urllib.parse.urlsplit(authorized.headers["location"])
    assert back.path == "/dashboard/oidc/callback"
    return await client.get(f"{back.path}?{back.query}", follow_redirects=False)


def signed_in_cookie(response: httpx.Response) -> str | None:
    return response.cookies.get(COOKIE_NAME) or None


async def test_the_provider_signs_in_the_existing_user_with_their_role(
    client: AsyncTestClient[Litestar], org: Org, provider: Provider
) -> None:
    hr = await make_user(client, org, "hr", email="Grace.Hopper@example.com")
    await configure(client, org, provider)
    client.cookies.clear()
    page = await client.get("/dashboard/sign-in", params={"org": org.id})
    host = urllib.parse.urlsplit(provider.issuer).hostname
    assert f"Sign in with {host}" in page.text
    assert f"/dashboard/oidc/start?org={org.id}" in page.text
    # Without `?org=`, or for an organisation without a provider: no such link.
    assert "Sign in with" not in (await client.get("/dashboard/sign-in")).text

    # The provider writes the address in another case: the same user.
    provider.claims = {"email": "grace.hopper@EXAMPLE.com", "email_verified": True}
    landed = await sign_in_through_provider(client, org)
    assert landed.status_code == 200, landed.text
    cookie = signed_in_cookie(landed)
    assert cookie, landed.headers
    client.cookies.clear()
    home = await client.get("/dashboard/", headers={"Cookie": f"{COOKIE_NAME}={cookie}"})
    assert home.status_code == 200
    assert f"{hr['email']} · hr" in home.text

    # The session is the password sign-in's: disabling the user ends it at once.
    disabled = await client.patch(
        f"/v2/users/{hr['id']}", json={"disabled": True}, headers=org.headers
    )
    assert disabled.status_code == 200, disabled.text
    client.cookies.clear()
    after = await client.get(
        "/dashboard/", headers={"Cookie": f"{COOKIE_NAME}={cookie}"}, follow_redirects=False
    )
    assert after.status_code == 303 and after.headers["location"] == "/dashboard/sign-in"
    refused = await sign_in_through_provider(client, org)
    assert refused.status_code == 401
    assert "is not an enabled user of this organisation" in refused.text
    assert signed_in_cookie(refused) is None


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong nonce", "id_token is not valid"),
        ("wrong audience", "id_token is not valid"),
        ("expired", "id_token is not valid"),
        ("other key", "id_token is not valid"),
        ("other algorithm and key", "id_token is not valid"),
        ("other issuer", "id_token is not valid"),
        ("unverified email", "has not verified"),
        ("no email", "did not share your email"),
        ("unknown email", "is not an enabled user of this organisation"),
    ],
)
async def test_an_answer_that_proves_nothing_is_refused_on_the_sign_in_page(
    client: AsyncTestClient[Litestar], org: Org, provider: Provider, case: str, expected: str
) -> None:
    user = await make_user(client, org, "owner")
    await configure(client, org, provider)
    now = int(time.time())
    provider.claims = {"email": user["email"], "email_verified": True}
    if case == "wrong nonce":
        provider.claims["nonce"] = "another-nonce"
    elif case == "wrong audience":
        provider.claims["aud"] = "another-client"
    elif case == "expired":
        provider.claims.update(iat=now - 3600, exp=now - 600)
    elif case == "other key":
        # Another key under the provider's key id: the signature does not verify.
        provider.signer = RSAKey.generate_key(2048, {"kid": "k1"})
    elif case == "other algorithm and key":
        provider.signer = ECKey.generate_key("P-256", {"kid": "k1"})
    elif case == "other issuer":
        provider.claims["iss"] = "https://elsewhere.example"
    elif case == "unverified email":
        provider.claims["email_verified"] = False
    elif case == "no email":
        provider.claims["email"] = None
    elif case == "unknown email":
        provider.claims["email"] = "stranger@example.com"
    with structlog.testing.capture_logs() as captured:
        refused = await sign_in_through_provider(client, org)
    assert refused.status_code == 401, refused.text
    assert expected in refused.text, refused.text
    assert signed_in_cookie(refused) is None
    assert provider.token_requests == 1
    assert CLIENT_SECRET not in repr(captured)

    # The control: the same provider, answering rightly, signs the user in.
    provider.claims = {"email": user["email"], "email_verified": True}
    provider.signer = None
    assert signed_in_cookie(await sign_in_through_provider(client, org))


async def test_a_callback_without_its_attempt_or_with_another_state_is_refused(
    client: AsyncTestClient[Litestar], org: Org, provider: Provider
) -> None:
    await make_user(client, org, "owner")
    await configure(client, org, provider)
    client.cookies.clear()
    stray = await client.get(
        "/dashboard/oidc/callback", params={"code": "c", "state": "s"}, follow_redirects=False
    )
    assert stray.status_code == 400 and "start again" in stray.text
    start = await client.get(
        "/dashboard/oidc/start", params={"org": org.id}, follow_redirects=False
    )
    assert start.status_code == 303
    forged = await client.get("/dashboard/oidc/callback", params={"code": "c", "state": "forged"})
    assert forged.status_code == 400 and "does not match" in forged.text
    assert provider.token_requests == 0
    # An organisation without a provider, and one that is not an id at all.
    for org_param in (str(uuid.uuid4()), "not-an-id", "x" * 100):
        none = await client.get("/dashboard/oidc/start", params={"org": org_param})
        assert none.status_code == 400 and "not set up" in none.text
    off = await client.put(
        "/v2/organization/oidc",
        json={"issuer": provider.issuer, "client_id": CLIENT_ID, "enabled": False},
        headers=org.headers,
    )
    assert off.status_code == 200 and off.json()["enabled"] is False
    disabled = await client.get("/dashboard/oidc/start", params={"org": org.id})
    assert disabled.status_code == 400

    # A provider that cannot be reached: the sign-in page says so (not a 500).
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{closed.getsockname()[1]}"
    moved = await client.put(
        "/v2/organization/oidc",
        json={"issuer": gone, "client_id": CLIENT_ID, "enabled": True},
        headers=org.headers,
    )
    assert moved.status_code == 200, moved.text
    unreachable = await client.get("/dashboard/oidc/start", params={"org": org.id})
    assert unreachable.status_code == 502 and "unavailable" in unreachable.text
    assert COOKIE_NAME not in unreachable.headers.get("set-cookie", "")


async def test_settings_are_the_owners_and_the_secret_never_shows(
    client: AsyncTestClient[Litestar], org: Org, provider: Provider, migrated_url: str
) -> None:
    owner = await make_user(client, org, "owner")
    admin = await make_user(client, org, "admin")
    settings = {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    refused = await client.put(
        "/v2/organization/oidc",
        json=settings,
        headers={"Authorization": f"Bearer {admin['token']}"},
    )
    assert refused.status_code == 403 and "`owner`" in refused.json()["detail"]
    as_owner = {"Authorization": f"Bearer {owner['token']}"}
    empty = await client.get("/v2/organization/oidc", headers=as_owner)
    assert empty.json()["configured"] is False
    missing_secret = {k: v for k, v in settings.items() if k != "client_secret"}
    first = await client.put("/v2/organization/oidc", json=missing_secret, headers=as_owner)
    assert first.status_code == 400 and first.json()["detail"].startswith("client_secret:")
    with structlog.testing.capture_logs() as captured:
        put = await client.put("/v2/organization/oidc", json=settings, headers=as_owner)
    assert put.status_code == 200, put.text
    assert CLIENT_SECRET not in put.text and put.json()["client_secret_set"] is True
    shown = await client.get("/v2/organization/oidc", headers=as_owner)
    assert shown.json() == put.json() and CLIENT_SECRET not in shown.text
    assert CLIENT_SECRET not in repr(captured)
    for field_name, value in (
        ("issuer", "http://login.example.com"),
        ("issuer", "ftp://127.0.0.1"),
        ("issuer", "https://"),
        ("issuer", "https://login.example.com/?tenant=1"),
        ("issuer", "https://login.example.com/\x00"),
        ("issuer", "https://login.example.com/" + "x" * 600),
        ("client_id", ""),
        ("client_id", "a\x00b"),
        ("client_id", "c" * 257),
        ("client_secret", "s" * 513),
        ("client_secret", "nul\x00"),
    ):
        bad = await client.put(
            "/v2/organization/oidc", json={**settings, field_name: value}, headers=as_owner
        )
        assert bad.status_code == 400, (field_name, value, bad.text)
        assert bad.json()["detail"].startswith(field_name), bad.text
    https = await client.put(
        "/v2/organization/oidc",
        json={"issuer": "https://login.example.com", "client_id": "x", "enabled": False},
        headers=as_owner,
    )
    assert https.status_code == 200 and https.json()["client_secret_set"] is True
    gone = await client.delete("/v2/organization/oidc", headers=as_owner)
    assert gone.status_code == 204
    again = await client.delete("/v2/organization/oidc", headers=as_owner)
    assert again.status_code == 404

    rows = [r for r in await audit_rows(migrated_url, org.id) if "oidc" in r["action"]]
    assert [r["action"] for r in rows] == [
        "organization_oidc.update",
        "organization_oidc.update",
        "organization_oidc.delete",
    ]
    assert all(r["actor_label"] == owner["email"] for r in rows)
    assert all(CLIENT_SECRET not in r["changes"] for r in rows)
    assert json.loads(rows[0]["changes"])["after"]["client_secret"] == "<changed>"
    # Kept sealed in the database.
    conn = await asyncpg.connect(migrated_url)
    try:
        await client.put("/v2/organization/oidc", json=settings, headers=as_owner)
        sealed = await conn.fetchval("SELECT client_secret_encrypted FROM organization_oidc")
    finally:
        await conn.close()
    assert sealed and CLIENT_SECRET not in sealed
