"""The local operator API's bearer token: `td-gateway local-token` mints one, `--revoke` ends it.

Only the token's sha256 is kept, in `<data dir>/local-token.sha256`, mode 0600. The running
gateway re-reads the file whenever it changes (inode, size or mtime), so minting a new token
or revoking it takes effect on the next request without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "local-token.sha256"
TOKEN_PREFIX = "tdl_"
# A token is the prefix and 43 url-safe characters; anything much longer is not one.
MAX_TOKEN_CHARS = 128


def _digest(token: str) -> str:
    # 256 random bits: one fast hash is enough, there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def mint(data_dir: Path) -> str:
    """A new token (returned once, never stored); the previous one stops working."""
    data_dir.mkdir(parents=True, exist_ok=True)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    target = data_dir / TOKEN_FILE
    temporary = target.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    # Created 0600 from the start: there is no moment at which others could read it.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(_digest(token) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)
    return token


def revoke(data_dir: Path) -> bool:
    """Remove the token; True if there was one."""
    target = data_dir / TOKEN_FILE
    existed = target.exists()
    target.unlink(missing_ok=True)
    return existed


class LocalToken:
    """Checks bearer tokens against the file, re-reading it only when it changed."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / TOKEN_FILE
        self._seen: tuple[int, int, int] | None = None
        self._digest = ""

    def configured(self) -> bool:
        return self._current() != ""

    def _current(self) -> str:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._seen, self._digest = None, ""
            return ""
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key != self._seen:
            try:
                self._digest = self._path.read_text().strip()
            except FileNotFoundError:
                self._digest = ""
            self._seen = key
        return self._digest

    def verify(self, token: str) -> bool:
        expected = self._current()
        if not expected or not token or len(token) > MAX_TOKEN_CHARS:
            return False
        return hmac.compare_digest(_digest(token), expected)
