"""Secrets the backend must read back (device passwords, enrollment keys), Fernet-encrypted."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE_NAME = "secret.key"


class SecretKeyError(RuntimeError):
    """The configured key is not a Fernet key, or stored secrets were encrypted with another."""


def load_or_create_key(data_dir: Path) -> bytes:
    """Read `<data_dir>/secret.key`, creating it (mode 0600) on first start."""
    path = data_dir / KEY_FILE_NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key


# HMAC'd under the key to fingerprint it: tells keys apart without revealing anything of them.
_FINGERPRINT_MESSAGE = b"td-backend secret key fingerprint v1"


class SecretBox:
    def __init__(self, key: bytes | str) -> None:
        self._key = key.encode() if isinstance(key, str) else key
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise SecretKeyError(
                "TD_SECRET_KEY must be a Fernet key (urlsafe base64 of 32 bytes);"
                " generate one with `python -c 'from cryptography.fernet import Fernet;"
                " print(Fernet.generate_key().decode())'`"
            ) from exc

    def fingerprint(self) -> str:
        """Names this key (the same for the same key) and reveals nothing of it."""
        return hmac.new(self._key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret does not decrypt with the current key;"
                " TD_SECRET_KEY (or <data-dir>/secret.key) changed"
            ) from None


def secret_box_for(secret_key: str | None, data_dir: Path) -> SecretBox:
    return SecretBox(secret_key if secret_key else load_or_create_key(data_dir))
