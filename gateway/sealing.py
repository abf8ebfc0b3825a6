"""Secrets at rest on the edge host: device passwords and the enrollment key.

They are sealed (Fernet) with a key derived from the gateway's API key by HKDF, so a copy of
the data directory alone does not reveal them: the API key lives only in the environment or
a file outside the data directory. When the API key changes, what was sealed with the old one
can no longer be opened; it is dropped, and the backend sends it again (sealed with the new
key) in its next `welcome`.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Fixed forever: changing either makes every sealed value on every gateway unreadable.
_SALT = b"td-gateway/secrets-at-rest"
_INFO = b"fernet key v1"


# What the log says when a sealed value is dropped.
RESEND_REASON = "sealed with another API key; the backend sends it again at connect"


class Unsealable(Exception):
    """The value was sealed with another key (the API key changed) or is damaged."""


class SecretBox:
    """Seals and opens small secrets with a key derived from the gateway's API key."""

    def __init__(self, api_key: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
            api_key.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def __repr__(self) -> str:
        return "SecretBox(***)"

    def seal(self, plain: bytes) -> bytes:
        return self._fernet.encrypt(plain)

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            raise Unsealable("sealed with another API key, or damaged") from None
