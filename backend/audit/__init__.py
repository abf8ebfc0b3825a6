"""The audit trail: who changed what, when, from where, with the before/after of the change.

`record` is the one writer. It writes inside the caller's open transaction (an asyncpg
connection, or Piccolo's current transaction), and refuses to write outside one: an event
and its change commit together or not at all. Rows are append-only in the database
(a trigger refuses UPDATE, DELETE and TRUNCATE; see the 2026-12-02 migration).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from piccolo.engine import engine_finder

from backend.accounts.actor import Actor, current_actor

# Never written into a changeset, whatever a caller passes: secrets and their hashes.
SECRET_KEYS = frozenset(
    {
        "password",
        "password_hash",
        "password_encrypted",
        "token",
        "token_hash",
        "api_key",
        "api_key_hash",
        "enrollment_key",
        "enrollment_key_encrypted",
        "lookup_prefix",
        "api_key_prefix",
        "client_secret",
        "client_secret_encrypted",
    }
)


class AuditOutsideTransaction(RuntimeError):
    """A change was about to be recorded on its own: a bug in the calling route."""


class NoActor(RuntimeError):
    """A change was about to be recorded with no author: a bug in the calling route."""


def _clean(value: Any) -> Any:
    builtins = msgspec.to_builtins(value, builtin_types=(), str_keys=True)
    return _without_secrets(builtins)


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: ("<changed>" if value[key] is not None else None)
            if key in SECRET_KEYS
            else _without_secrets(value[key])
            for key in value
        }
    if isinstance(value, list):
        return [_without_secrets(item) for item in value]
    return value


def _connection_of(conn: Any | None) -> Any:
    if conn is None:
        engine = engine_finder()
        transaction = engine.current_transaction.get() if engine is not None else None
        if transaction is None:
            raise AuditOutsideTransaction("audit.record needs the change's transaction")
        conn = transaction.connection
    if not conn.is_in_transaction():
        raise AuditOutsideTransaction("audit.record needs the change's transaction")
    return conn


async def record(
    conn: Any | None,
    action: str,
    target_type: str,
    target_id: Any,
    *,
    before: Any = None,
    after: Any = None,
    actor: Actor | None = None,
) -> uuid.UUID:
    """Append one event for the change the caller is making in its transaction.

    `conn`: the asyncpg connection whose transaction holds the change, or None inside a
    Piccolo transaction. `before` / `after`: the target's state (any msgspec-encodable
    value); secret fields are written as `<changed>`. The author is the request's actor.
    """
    actor = actor or current_actor()
    if actor is None:
        raise NoActor(f"{action}: no signed-in actor to record as its author")
    conn = _connection_of(conn)
    event_id = uuid.uuid4()
    changes = msgspec.json.encode({"before": _clean(before), "after": _clean(after)}).decode()
    await conn.execute(
        "INSERT INTO audit_events (id, org_id, actor_kind, actor_id, actor_label, role,"
        " action, target_type, target_id, changes, remote_address)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)",
        event_id,
        actor.org_id,
        actor.kind,
        actor.id,
        actor.label[:320],
        actor.role,
        action,
        target_type,
        None if target_id is None else str(target_id)[:128],
        changes,
        (actor.remote_address or None) and str(actor.remote_address)[:64],
    )
    return event_id
