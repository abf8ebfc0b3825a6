"""HTTP Digest (MD5, qop=auth) as Hikvision terminals speak it, for both ends.

httpx.DigestAuth is close but unsafe against these devices: with a cached challenge, a 401
makes it send the credentials again at once (a second bad login towards the lock-out), and a
401 that carries no new challenge (firmware that rejects a reused nonce) leaves it stuck
reusing the dead nonce forever. `IsapiDigestAuth` sends credentials at most once per fresh
challenge, and after a 401 following earlier success fetches one fresh challenge with a
request without credentials, which devices do not count as a failed login.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncGenerator, Generator

import httpx
import msgspec

from gateway.devices.isapi_status import parse_user_check


class DigestChallenge(msgspec.Struct, frozen=True, kw_only=True):
    realm: str
    nonce: str
    qop: str | None = None
    opaque: str | None = None
    algorithm: str = "MD5"


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_digest_params(header: str) -> dict[str, str] | None:
    """The key=value pairs of a `Digest ...` header; None for any other scheme."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    return {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }


def parse_challenge(headers: list[str]) -> DigestChallenge | None:
    for header in headers:
        params = parse_digest_params(header)
        if params and "realm" in params and "nonce" in params:
            return DigestChallenge(
                realm=params["realm"],
                nonce=params["nonce"],
                qop=params.get("qop"),
                opaque=params.get("opaque"),
                algorithm=params.get("algorithm", "MD5"),
            )
    return None


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def digest_response(
    *,
    username: str,
    password: str,
    realm: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str | None,
) -> str:
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop is None:
        return _md5(f"{ha1}:{nonce}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _qop_auth(offered: str | None) -> str | None:
    if offered is None:
        return None
    if "auth" in (q.strip() for q in offered.split(",")):
        return "auth"
    return None


class IsapiDigestAuth(httpx.Auth):
    # The 401 body says whether the login is locked, so 401s are read (async_auth_flow); other
    # answers are not, because a 200 may be an endless stream (the alert stream).
    requires_response_body = False

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password
        self._challenge: DigestChallenge | None = None
        self._nonce_count = 0

    def __repr__(self) -> str:
        return f"IsapiDigestAuth(username={self._username!r})"

    def _authorize(self, request: httpx.Request, challenge: DigestChallenge) -> None:
        if challenge.algorithm.upper() != "MD5":
            raise httpx.ProtocolError(f"unsupported digest algorithm {challenge.algorithm!r}")
        self._nonce_count += 1
        nc = f"{self._nonce_count:08x}"
        cnonce = os.urandom(8).hex()
        qop = _qop_auth(challenge.qop)
        uri = request.url.raw_path.decode()
        response = digest_response(
            username=self._username,
            password=self._password,
            realm=challenge.realm,
            method=request.method,
            uri=uri,
            nonce=challenge.nonce,
            nc=nc,
            cnonce=cnonce,
            qop=qop,
        )
        fields = [
            f'username="{self._username}"',
            f'realm="{challenge.realm}"',
            f'nonce="{challenge.nonce}"',
            f'uri="{uri}"',
            f'response="{response}"',
            "algorithm=MD5",
        ]
        if challenge.opaque is not None:
            fields.append(f'opaque="{challenge.opaque}"')
        if qop is not None:
            fields += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
        request.headers["Authorization"] = "Digest " + ", ".join(fields)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if response.status_code == 401:
                response.read()
            try:
                request = flow.send(response)
            except StopIteration:
                break

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if response.status_code == 401:
                await response.aread()
            try:
                request = flow.send(response)
            except StopIteration:
                break

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._challenge is not None:
            self._authorize(request, self._challenge)
            response = yield request
            if response.status_code != 401:
                return
            check = parse_user_check(response.content)
            if check is not None and check.locked:
                return
            # 401 after earlier success: most likely the device stopped accepting our nonce.
            # Take a fresh challenge once; a wrong password then fails on the next answer.
            self._challenge = None
            challenge = parse_challenge(response.headers.get_list("www-authenticate"))
            if challenge is None:
                del request.headers["Authorization"]
                response = yield request
        else:
            response = yield request
            challenge = None
        if response.status_code != 401:
            return
        challenge = challenge or parse_challenge(response.headers.get_list("www-authenticate"))
        if challenge is None:
            return
        self._challenge = challenge
        self._nonce_count = 0
        self._authorize(request, challenge)
        response = yield request
        if response.status_code == 401:
            # Wrong credentials: forget the challenge so the next call starts clean.
            self._challenge = None
