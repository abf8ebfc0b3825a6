"""The start-up check that this instance's TD_SECRET_KEY is the one the database's secrets
(enrollment keys, device passwords) were encrypted with.

The database keeps a fingerprint of the key (an HMAC of a constant, never the key). The
first start stores it; an instance with another key is refused before it serves anything,
instead of failing every control session that needs a secret.
"""

from __future__ import annotations

from typing import Any

from backend.crypto import SecretBox, SecretKeyError

MISMATCH = (
    "TD_SECRET_KEY does not match the key this database's secrets are encrypted with;"
    " start every instance on this database with the same TD_SECRET_KEY"
)


async def check_secret_key(conn: Any, secrets: SecretBox) -> None:
    """Store the key's fingerprint on first start; SecretKeyError if the database has another."""
    fingerprint = secrets.fingerprint()
    async with conn.transaction():
        # Serialises the first start of several instances: one stores, the rest compare.
        await conn.execute("LOCK TABLE secret_key_fingerprint IN EXCLUSIVE MODE")
        stored = await conn.fetchval("SELECT fingerprint FROM secret_key_fingerprint")
        if stored is not None:
            if stored != fingerprint:
                raise SecretKeyError(MISMATCH)
            return
        # A database from before fingerprints: its secrets must decrypt with this key.
        sample = await conn.fetchval(
            "SELECT enrollment_key_encrypted FROM gateway_instances"
            " UNION ALL SELECT password_encrypted FROM devices LIMIT 1"
        )
        if sample is not None:
            try:
                secrets.decrypt(sample)
            except SecretKeyError:
                raise SecretKeyError(MISMATCH) from None
        await conn.execute(
            "INSERT INTO secret_key_fingerprint (fingerprint) VALUES ($1)", fingerprint
        )
