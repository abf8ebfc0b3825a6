"""User passwords: argon2id (argon2-cffi's RFC 9106 low-memory profile), never stored clear.

A hash made with older parameters still verifies, and `verify` hands back a fresh hash for
the caller to store, so raising the parameters upgrades every account at its next sign-in.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

# Checked against when no user has the address, so an unknown address costs as long as a
# wrong password and the two cannot be told apart by timing.
_DUMMY_HASH = _hasher.hash("no user has this password")


def hash_password(password: str, hasher: PasswordHasher = _hasher) -> str:
    return hasher.hash(password)


def verify(
    stored_hash: str | None, password: str, hasher: PasswordHasher = _hasher
) -> tuple[bool, str | None]:
    """(whether `password` matches, a new hash to store when the parameters changed)."""
    try:
        hasher.verify(stored_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False, None
    if stored_hash is None:
        return False, None
    return True, hasher.hash(password) if hasher.check_needs_rehash(stored_hash) else None
