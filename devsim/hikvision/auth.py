"""Digest authentication as a Hikvision terminal enforces it, for the simulator.

Per client address: each bad login counts, and after `lockout_after` of them the address is
locked for `unlock_s` seconds, during which even the right password gets a 401. Requests
without credentials never count. Optionally nonces wear out after a few uses and are then
refused with a 401 that carries no new challenge, as some firmware does.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import msgspec

from devsim.hikvision.bodies import user_check_xml
from devsim.hikvision.wire import digest_params, expected_digest

_MAX_NONCES = 1024


class Unauthorized(msgspec.Struct, kw_only=True):
    body: bytes
    challenge: str | None  # the WWW-Authenticate value, if the answer carries one


class DigestGate:
    def __init__(
        self,
        *,
        user: str,
        password: str,
        realm: str,
        lockout_after: int,
        unlock_s: float,
        nonce_max_uses: int,
        clock: Callable[[], float],
    ) -> None:
        self._user = user
        self._password = password
        self.realm = realm
        self._lockout_after = lockout_after
        self._unlock_s = unlock_s
        self._nonce_max_uses = nonce_max_uses
        self._clock = clock
        self._nonces: dict[str, int] = {}
        # Worn-out nonces keep getting a 401 without a challenge, as on the real firmware.
        self._worn_nonces: dict[str, None] = {}
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"DigestGate(user={self._user!r}, realm={self.realm!r})"

    def forget_nonces(self) -> None:
        self._nonces.clear()
        self._worn_nonces.clear()

    def _challenge(self) -> str:
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = 0
        _trim(self._nonces)
        return f'Digest qop="auth", realm="{self.realm}", nonce="{nonce}", stale="FALSE"'

    def _unauthorized(self, client: str, *, challenge: bool = True) -> Unauthorized:
        now = self._clock()
        locked_for = max(0, round(self._locked_until.get(client, now) - now))
        retries = max(0, self._lockout_after - self._failures.get(client, 0))
        return Unauthorized(
            body=user_check_xml(locked_for > 0, locked_for, retries),
            challenge=self._challenge() if challenge else None,
        )

    def check(self, method: str, path: str, authorization: str, client: str) -> Unauthorized | None:
        """None when the request may pass; else the 401 to answer."""
        if self._locked_until.get(client, 0.0) <= self._clock():
            self._locked_until.pop(client, None)
        else:
            return self._unauthorized(client)
        params = digest_params(authorization)
        if not params:
            return self._unauthorized(client)  # no credentials: does not count as a failure
        nonce = params.get("nonce", "")
        if nonce in self._worn_nonces:
            return self._unauthorized(client, challenge=False)
        if nonce not in self._nonces:
            return self._unauthorized(client)
        uses = self._nonces[nonce] + 1
        if self._nonce_max_uses and uses >= self._nonce_max_uses:
            # Only a request without credentials gets the client a fresh nonce now.
            del self._nonces[nonce]
            self._worn_nonces[nonce] = None
            _trim(self._worn_nonces)
            return self._unauthorized(client, challenge=False)
        expected = expected_digest(
            params, username=self._user, password=self._password, realm=self.realm, method=method
        )
        ok = (
            params.get("username") == self._user
            and secrets.compare_digest(params.get("response", ""), expected)
            and params.get("uri", "").split("?")[0].lower() == path.lower()
        )
        if not ok:
            failures = self._failures.get(client, 0) + 1
            self._failures[client] = failures
            if self._lockout_after and failures >= self._lockout_after:
                self._locked_until[client] = self._clock() + self._unlock_s
                self._failures[client] = 0
            return self._unauthorized(client)
        self._nonces[nonce] = uses
        self._failures.pop(client, None)
        return None


def _trim(nonces: dict[str, Any]) -> None:
    """Forget the oldest nonces so a long-running simulator stays small."""
    while len(nonces) > _MAX_NONCES:
        del nonces[next(iter(nonces))]
