"""The relying party's side of the OpenID Connect authorization-code flow with PKCE.

Discovery reads `<issuer>/.well-known/openid-configuration` (whose `issuer` must be the
configured one, byte for byte); authlib builds the authorization URL and exchanges the code;
joserfc (authlib's JOSE library) checks the id_token's signature against the provider's
JWKS, and its issuer, audience, expiry and nonce.
"""

from __future__ import annotations

import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.common.errors import AuthlibBaseError  # type: ignore[import-untyped]
from authlib.integrations.httpx_client import (  # type: ignore[import-untyped]
    AsyncOAuth2Client,
)
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from backend.oidc.settings import ProviderSettings, local_url

DISCOVERY_PATH = "/.well-known/openid-configuration"
TIMEOUT_S = 10.0
MAX_DOCUMENT_BYTES = 256 * 1024
# Clocks of the provider and of this server may differ a little.
LEEWAY_S = 60
SIGNING_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
SCOPE = "openid email"


class ProviderUnavailable(Exception):
    """The provider could not be reached, or answered something unusable."""


class SignInRefused(Exception):
    """The provider's answer does not prove who the user is: the sentence says why."""


@dataclass(frozen=True, slots=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the browser carries (sealed) from start to callback."""

    state: str
    nonce: str
    code_verifier: str


def _endpoint(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or len(value) > 2048:
        raise ProviderUnavailable(f"the provider's discovery document has no usable {name}")
    if not (value.startswith("https://") or (value.startswith("http://") and local_url(value))):
        raise ProviderUnavailable(f"the provider's {name} is not an https URL")
    return value


async def _get_json(client: httpx2.AsyncClient, url: str) -> dict[str, Any]:
    try:
        response = await client.get(url)
    except httpx2.HTTPError as exc:
        reason = f"the provider could not be reached ({type(exc).__name__})"
        raise ProviderUnavailable(reason) from None
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
        raise ProviderUnavailable(f"the provider answered {url} with {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise ProviderUnavailable(f"the provider's {url} is not JSON") from None
    if not isinstance(document, dict):
        raise ProviderUnavailable(f"the provider's {url} is not a JSON object")
    return document


async def discover(issuer: str) -> Provider:
    async with httpx2.AsyncClient(timeout=TIMEOUT_S) as client:
        document = await _get_json(client, issuer.rstrip("/") + DISCOVERY_PATH)
    if document.get("issuer") != issuer:
        raise ProviderUnavailable("the provider's discovery document names another issuer")
    return Provider(
        issuer=issuer,
        authorization_endpoint=_endpoint(document, "authorization_endpoint"),
        token_endpoint=_endpoint(document, "token_endpoint"),
        jwks_uri=_endpoint(document, "jwks_uri"),
    )


def new_attempt() -> Attempt:
    return Attempt(
        state=secrets.token_urlsafe(24),
        nonce=secrets.token_urlsafe(24),
        code_verifier=secrets.token_urlsafe(48),
    )


def _client(settings: ProviderSettings, redirect_uri: str) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scope=SCOPE,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=TIMEOUT_S,
    )


async def authorization_url(
    settings: ProviderSettings, provider: Provider, attempt: Attempt, redirect_uri: str
) -> str:
    async with _client(settings, redirect_uri) as client:
        url, _ = client.create_authorization_url(
            provider.authorization_endpoint,
            state=attempt.state,
            code_verifier=attempt.code_verifier,
            nonce=attempt.nonce,
        )
    return str(url)


async def exchange_code(
    settings: ProviderSettings, provider: Provider, attempt: Attempt, redirect_uri: str, code: str
) -> str:
    """The id_token the provider gives for `code` (PKCE: the attempt's verifier)."""
    async with _client(settings, redirect_uri) as client:
        try:
            token = await client.fetch_token(
                provider.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=attempt.code_verifier,
            )
        except AuthlibBaseError as exc:
            raise SignInRefused(f"the provider refused the sign-in ({exc.error})") from None
        except (httpx2.HTTPError, ValueError) as exc:
            raise ProviderUnavailable(
                f"the provider's token endpoint failed ({type(exc).__name__})"
            ) from None
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or len(id_token) > MAX_DOCUMENT_BYTES:
        raise SignInRefused("the provider sent no id_token")
    return id_token


async def verified_email(
    settings: ProviderSettings, provider: Provider, attempt: Attempt, id_token: str
) -> str:
    """The address the id_token proves, once its signature (the provider's JWKS), issuer,
    audience, expiry and nonce hold, and the provider says the address is verified."""
    async with httpx2.AsyncClient(timeout=TIMEOUT_S) as client:
        jwks = await _get_json(client, provider.jwks_uri)
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise ProviderUnavailable("the provider's JWKS holds no usable key") from None
    try:
        token = jwt.decode(id_token, keys, algorithms=SIGNING_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            leeway=LEEWAY_S,
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "value": settings.client_id},
            exp={"essential": True},
            sub={"essential": True},
            nonce={"essential": True, "value": attempt.nonce},
        ).validate(token.claims)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        reason = f"the provider's id_token is not valid ({exc.__class__.__name__})"
        raise SignInRefused(reason) from None
    claims = token.claims
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != settings.client_id:
        raise SignInRefused("the provider's id_token is meant for another client")
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        raise SignInRefused("the provider did not share your email address (scope `email`)")
    if "email_verified" in claims and claims["email_verified"] not in (True, "true"):
        raise SignInRefused(f"the provider has not verified {email[:254]}")
    return email


def provider_name(issuer: str) -> str:
    """How the sign-in page names the provider: its host."""
    return urllib.parse.urlsplit(issuer).hostname or issuer
