"""What the gateway must remember apart from logs: registered agents (tokens hashed),
operators' revocations and resets, policies and assignments, settings learnt from the
backend (the enrollment key sealed, see gateway/sealing.py), executed commands' results.
(Device configs live with the device manager, in devices.db.)

An agent_uid belongs to the agent that registered it first: registering it again needs that
agent's current token, or an operator's reset (a re-imaged PC), so no one on the LAN who
knows the enrollment key can take over another agent's identity and history.

Its own SQLite file, so a buffer file moved aside as corrupt never takes registrations with
it. Reads are served from memory (loaded at start; there are thousands of agents, not
millions); writes go through to SQLite in a worker thread before memory changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import apsw
import msgspec
import structlog
import trio

from gateway.errors import AgentRevoked, IdentityTaken, StorageError
from gateway.sealing import RESEND_REASON, SecretBox, Unsealable
from gateway.sqlite import query
from protocol import codec
from protocol.agent import AgentPolicy, PolicyBody, RegisterRequest
from protocol.control import (
    AgentAccess,
    AgentSeen,
    Command,
    CommandResult,
    CommandStatus,
    PolicyUpdate,
)

log = structlog.get_logger("gateway.state")

T = TypeVar("T")
STATE_FILE = "state.db"
BUILTIN_POLICY_ID = "builtin-default"
# Settings kept sealed: in memory under their name, on disk under name + SEALED_SUFFIX.
SECRET_SETTINGS = frozenset({"enrollment_key"})
SEALED_SUFFIX = ".sealed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    agent_uid TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    os TEXT,
    version TEXT,
    token_hash BLOB NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS policies (
    policy_id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (agent_uid TEXT PRIMARY KEY, policy_id TEXT);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The last operator decision per agent_uid (revoke, reset, delete), by the backend's clock.
-- 'active' is a reset that a registration has used up.
CREATE TABLE IF NOT EXISTS agent_access (
    agent_uid TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    action TEXT NOT NULL,
    changed_at REAL NOT NULL
);
-- A row is written before a command runs and gets its result after: a row without a
-- result is a command interrupted by a crash, which is answered, never run again.
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    result BLOB
);
-- Device commands run through the local API (their ids are ours), until the backend has
-- recorded them; the outcome is the `commands` row of the same id.
CREATE TABLE IF NOT EXISTS local_commands (
    command_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    command BLOB NOT NULL,
    created_at REAL NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS local_commands_unreported ON local_commands (reported, created_at);
"""

_INTERRUPTED = "the gateway stopped while running this command; it was not run again"


@dataclass
class Agent:
    agent_id: str
    agent_uid: str
    hostname: str
    os: str | None
    version: str | None
    token_hash: bytes
    last_seen_at: float


@dataclass
class Access:
    agent_id: str
    action: str  # revoke | reset | active
    changed_at: float


# A revoked agent's stored hash: no token hashes to it.
_NO_TOKEN = b""


def _hash(secret: str) -> bytes:
    # Tokens are 256 random bits, so one fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).digest()


def builtin_policy() -> AgentPolicy:
    body = PolicyBody()
    return AgentPolicy(
        policy_id=BUILTIN_POLICY_ID, revision=0, checksum=codec.policy_checksum(body), body=body
    )


def etag(policy: AgentPolicy) -> str:
    return f'"{policy.policy_id}:{policy.revision}:{policy.checksum[:16]}"'


class State:
    """Start with `await nursery.start(state.run)`; closed when that task ends."""

    def __init__(self, data_dir: Path, box: SecretBox | None = None) -> None:
        self.path = data_dir / STATE_FILE
        self._box = box
        self._access: dict[str, Access] = {}
        # uids with a registration between its checks and its commit
        self._registering: set[str] = set()
        self._conn: apsw.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._commit_lock = trio.Lock()
        self._pending: list[_PendingWrite] = []
        self._agents: dict[str, Agent] = {}
        self._by_uid: dict[str, str] = {}
        self._policies: dict[str, PolicyUpdate] = {}
        self._assignments: dict[str, str | None] = {}
        self._settings: dict[str, str] = {}
        self._policy_changed = trio.Event()
        # Agents seen since the control channel last reported them (agent_id set).
        self.seen_since_report: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(self._load, limiter=self._limiter)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            # Under the commit lock: another task's shielded commit may still be running in a
            # thread on this connection, and closing it under that commit fails the gateway.
            with trio.CancelScope(shield=True):
                async with self._commit_lock:
                    conn, self._conn = self._conn, None
                    if conn is not None:
                        conn.close()

    def _load(self) -> None:
        try:
            conn = apsw.Connection(str(self.path))
            # Deleted rows (a plaintext secret from an older version) are overwritten.
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            with conn:
                conn.execute(_SCHEMA)
            for agent_id, uid, hostname, os_name, version, token_hash in query(
                conn, "SELECT agent_id, agent_uid, hostname, os, version, token_hash FROM agents"
            ):
                # Not seen since this start: nothing counts an agent connected until it asks.
                self._remember(Agent(agent_id, uid, hostname, os_name, version, token_hash, 0.0))
            for (body,) in query(conn, "SELECT body FROM policies"):
                update = msgspec.msgpack.decode(body, type=PolicyUpdate)
                self._policies[update.policy_id] = update
            self._assignments = dict(query(conn, "SELECT agent_uid, policy_id FROM assignments"))
            for uid, agent_id, action, changed_at in query(
                conn, "SELECT agent_uid, agent_id, action, changed_at FROM agent_access"
            ):
                self._access[uid] = Access(agent_id, action, changed_at)
            self._settings = self._load_settings(conn)
            with conn:
                _close_interrupted_local_commands(conn)
        except apsw.Error as exc:
            raise StorageError(f"cannot open the gateway state at {self.path}: {exc}") from exc
        self._conn = conn

    def _load_settings(self, conn: apsw.Connection) -> dict[str, str]:
        """Settings with secrets opened; a secret stored in clear (older versions) is sealed
        now, one sealed with another API key is dropped (the backend sends it again)."""
        stored = dict(query(conn, "SELECT key, value FROM settings"))
        settings = {k: v for k, v in stored.items() if not k.endswith(SEALED_SUFFIX)}
        for name in SECRET_SETTINGS:
            plain = settings.pop(name, None)
            sealed = stored.get(name + SEALED_SUFFIX)
            if plain is not None:
                with conn:
                    conn.execute("DELETE FROM settings WHERE key = ?", (name,))
                    if self._box is not None:
                        self._save_sealed(conn, name, plain)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                settings[name] = plain
            elif sealed is not None and self._box is not None:
                try:
                    settings[name] = self._box.open(sealed.encode()).decode()
                except Unsealable:
                    log.warning("sealed_setting_dropped", setting=name, reason=RESEND_REASON)
                    with conn:
                        conn.execute("DELETE FROM settings WHERE key = ?", (name + SEALED_SUFFIX,))
        return settings

    def _save_sealed(self, conn: apsw.Connection, name: str, value: str) -> None:
        assert self._box is not None
        conn.execute(
            "INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
            (name + SEALED_SUFFIX, self._box.seal(value.encode()).decode()),
        )

    async def _write(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run `fn` in a transaction and return its result once committed.

        Group commit: writes that arrive while a commit is under way go together in the next
        one, each in its own savepoint. With synchronous=FULL every commit is an fsync, and a
        thousand agents registering at once would otherwise queue behind a thousand of them.
        """
        if self._conn is None:
            raise StorageError("the gateway state is not open")
        write = _PendingWrite(fn)
        self._pending.append(write)
        async with self._commit_lock:
            if not write.done:
                conn = self._conn
                if conn is None:  # closed while this write waited for the lock
                    raise StorageError("the gateway state is not open")
                batch, self._pending = self._pending, []
                # Shielded: the batch holds other callers' writes, and they must be committed.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_commit, conn, batch, limiter=self._limiter)
        if isinstance(write.error, apsw.Error):
            raise StorageError(f"the gateway state could not be saved: {write.error}")
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[return-value]

    # ---- agents ----------------------------------------------------------------------------

    def _remember(self, agent: Agent) -> None:
        self._agents[agent.agent_id] = agent
        self._by_uid[agent.agent_uid] = agent.agent_id

    async def register(
        self, request: RegisterRequest, presented_token: str = ""
    ) -> tuple[Agent, str]:
        """Register an agent, or re-register it (which rotates its token); returns its token.

        A registered uid takes a new registration only with its current token
        (`presented_token`) or after an operator's reset: IdentityTaken otherwise,
        AgentRevoked while an operator's revocation stands."""
        uid = request.agent_uid
        access = self._access.get(uid)
        if access is not None and access.action == "revoke":
            raise AgentRevoked(uid)
        reset = access is not None and access.action == "reset"
        existing = self._agents.get(self._by_uid.get(uid, ""))
        if uid in self._registering:
            raise IdentityTaken(uid)
        if existing is not None and not reset and not self._holds_token(existing, presented_token):
            raise IdentityTaken(uid)
        # Kept across a reset (the same agent on a re-imaged PC) and after a revocation
        # reached a gateway that had forgotten the agent: one id from start to finish.
        if existing is not None:
            agent_id = existing.agent_id
        elif (
            access is not None and _is_uuid(access.agent_id) and access.agent_id not in self._agents
        ):
            agent_id = access.agent_id
        else:
            agent_id = str(uuid.uuid4())
        self._registering.add(uid)
        try:
            return await self._save_registration(request, agent_id, access if reset else None)
        finally:
            self._registering.discard(uid)

    def _holds_token(self, agent: Agent, token: str) -> bool:
        agent_id, _, secret = token.partition(".")
        return (
            agent_id == agent.agent_id
            and bool(secret)
            and hmac.compare_digest(agent.token_hash, _hash(secret))
        )

    async def _save_registration(
        self, request: RegisterRequest, agent_id: str, used_reset: Access | None
    ) -> tuple[Agent, str]:
        secret = secrets.token_urlsafe(32)
        agent = Agent(
            agent_id=agent_id,
            agent_uid=request.agent_uid,
            hostname=request.hostname,
            os=request.os,
            version=request.version,
            token_hash=_hash(secret),
            last_seen_at=time.time(),
        )

        def save(conn: apsw.Connection) -> bool:
            # A revocation committed while this registration waited wins: no token.
            revoked = bool(
                query(
                    conn,
                    "SELECT 1 FROM agent_access WHERE agent_uid = ? AND action = 'revoke'",
                    (agent.agent_uid,),
                )
            )
            if revoked:
                agent.token_hash = _NO_TOKEN
            conn.execute(
                "INSERT INTO agents(agent_id, agent_uid, hostname, os, version, token_hash,"
                " registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(agent_uid) DO UPDATE SET hostname = excluded.hostname,"
                " os = excluded.os, version = excluded.version,"
                " token_hash = excluded.token_hash",
                (
                    agent_id,
                    agent.agent_uid,
                    agent.hostname,
                    agent.os,
                    agent.version,
                    agent.token_hash,
                    agent.last_seen_at,
                ),
            )
            if used_reset is not None:  # a reset allows one registration
                conn.execute(
                    "UPDATE agent_access SET action = 'active'"
                    " WHERE agent_uid = ? AND action = 'reset' AND changed_at = ?",
                    (agent.agent_uid, used_reset.changed_at),
                )
            return revoked

        revoked = await self._write(save)
        if used_reset is not None and used_reset.action == "reset":
            used_reset.action = "active"
        self._remember(agent)
        # Either this or the revocation resumed last: each clears the token it finds.
        access = self._access.get(agent.agent_uid)
        if revoked or (access is not None and access.action == "revoke"):
            agent.token_hash = _NO_TOKEN
            raise AgentRevoked(agent.agent_uid)
        self.seen_since_report.add(agent_id)
        return agent, f"{agent_id}.{secret}"

    def authenticate(self, token: str) -> Agent | None:
        """The agent a bearer token belongs to, or None; compares in constant time."""
        agent_id, _, secret = token.partition(".")
        agent = self._agents.get(agent_id)
        if agent is None or not secret:
            return None
        if not hmac.compare_digest(agent.token_hash, _hash(secret)):
            return None
        agent.last_seen_at = time.time()
        self.seen_since_report.add(agent_id)
        return agent

    def agent(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def agent_id_of(self, agent_uid: str) -> str | None:
        return self._by_uid.get(agent_uid)

    async def apply_access(self, decision: AgentAccess) -> bool:
        """Apply an operator's revoke / reset / delete; False when it is not newer than the
        last one applied for that uid, or (delete) names another registration of the uid."""
        uid = decision.agent_uid
        changed_at = decision.changed_at.timestamp()
        known = self._access.get(uid)
        if known is not None and known.changed_at >= changed_at:
            return False
        current = self._agents.get(self._by_uid.get(uid, ""))
        if decision.action == "delete":
            if current is None or current.agent_id != decision.agent_id:
                return False  # already gone, or the uid registered anew since
            await self._forget(current)
            return True

        def save(conn: apsw.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO agent_access(agent_uid, agent_id, action, changed_at)"
                " VALUES (?, ?, ?, ?)",
                (uid, decision.agent_id, decision.action, changed_at),
            )
            if decision.action == "revoke":
                conn.execute(
                    "UPDATE agents SET token_hash = ? WHERE agent_uid = ?", (_NO_TOKEN, uid)
                )

        await self._write(save)
        self._access[uid] = Access(decision.agent_id, decision.action, changed_at)
        if decision.action == "revoke":
            # Looked up again: a registration may have replaced the agent meanwhile.
            for agent in (current, self._agents.get(self._by_uid.get(uid, ""))):
                if agent is not None:
                    agent.token_hash = _NO_TOKEN
        return True

    async def _forget(self, agent: Agent) -> None:
        def delete(conn: apsw.Connection) -> None:
            conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent.agent_id,))
            conn.execute("DELETE FROM assignments WHERE agent_uid = ?", (agent.agent_uid,))
            conn.execute("DELETE FROM agent_access WHERE agent_uid = ?", (agent.agent_uid,))

        await self._write(delete)
        self._agents.pop(agent.agent_id, None)
        self._by_uid.pop(agent.agent_uid, None)
        self._assignments.pop(agent.agent_uid, None)
        self._access.pop(agent.agent_uid, None)
        self.seen_since_report.discard(agent.agent_id)
        self._policies_changed()

    def connected_agents(self, within_s: float = 120.0) -> int:
        since = time.time() - within_s
        return sum(1 for agent in self._agents.values() if agent.last_seen_at >= since)

    def take_seen(self) -> tuple[set[str], list[AgentSeen]]:
        """Agents seen since the last report, as (ids, messages); `put_back(ids)` if the
        report could not be sent."""
        ids, self.seen_since_report = self.seen_since_report, set()
        seen = []
        for agent_id in ids:
            agent = self._agents.get(agent_id)
            if agent is not None:
                seen.append(
                    AgentSeen(
                        agent_uid=agent.agent_uid,
                        hostname=agent.hostname,
                        last_seen_at=dt.datetime.fromtimestamp(agent.last_seen_at, dt.UTC),
                        os=agent.os,
                        version=agent.version,
                        agent_id=agent.agent_id,
                    )
                )
        return ids, seen

    def put_back(self, ids: set[str]) -> None:
        self.seen_since_report |= ids

    # ---- policies --------------------------------------------------------------------------

    def policy_for(self, agent_uid: str) -> AgentPolicy:
        """The agent's assigned policy, else the organisation default, else the built-in."""
        chosen = self._policies.get(self._assignments.get(agent_uid) or "")
        if chosen is None:
            chosen = next((p for p in self._policies.values() if p.is_default), None)
        if chosen is None:
            return builtin_policy()
        return AgentPolicy(
            policy_id=chosen.policy_id,
            revision=chosen.revision,
            checksum=chosen.checksum,
            body=chosen.body,
        )

    def policies(self) -> list[PolicyUpdate]:
        return list(self._policies.values())

    def policy_revisions(self) -> dict[str, int]:
        return {pid: update.revision for pid, update in self._policies.items()}

    def policy_change_event(self) -> trio.Event:
        """Set at the next policy or assignment change; take it before reading the policy."""
        return self._policy_changed

    def _policies_changed(self) -> None:
        self._policy_changed.set()
        self._policy_changed = trio.Event()

    async def apply_policy(self, update: PolicyUpdate) -> None:
        def save(conn: apsw.Connection) -> None:
            if update.is_default:
                conn.execute("UPDATE policies SET is_default = 0")
            conn.execute(
                "INSERT OR REPLACE INTO policies(policy_id, revision, checksum, is_default, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    update.policy_id,
                    update.revision,
                    update.checksum,
                    int(update.is_default),
                    codec.msgpack_encoder.encode(update),
                ),
            )

        await self._write(save)
        if update.is_default:
            for pid, known in list(self._policies.items()):
                if known.is_default:
                    self._policies[pid] = msgspec.structs.replace(known, is_default=False)
        self._policies[update.policy_id] = update
        self._policies_changed()

    async def assign(self, agent_uid: str, policy_id: str | None) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO assignments(agent_uid, policy_id) VALUES (?, ?)",
                (agent_uid, policy_id),
            )
        )
        self._assignments[agent_uid] = policy_id
        self._policies_changed()

    # ---- settings learnt from the backend --------------------------------------------------

    def setting(self, key: str) -> str | None:
        return self._settings.get(key)

    async def set_setting(self, key: str, value: str) -> None:
        """Remember a setting; the SECRET_SETTINGS only sealed (never without a SecretBox)."""
        if self._settings.get(key) == value:
            return
        if key in SECRET_SETTINGS:
            if self._box is None:
                raise StorageError(f"{key} is a secret and this state has no key to seal it")
            await self._write(lambda conn: self._save_sealed(conn, key, value))
        else:
            await self._write(
                lambda conn: conn.execute(
                    "INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, value)
                )
            )
        self._settings[key] = value

    # ---- commands --------------------------------------------------------------------------

    async def begin_command(self, command_id: uuid.UUID) -> CommandResult | None:
        """Record that a command starts now; returns None to go ahead, or the answer to give
        instead when this id was seen before (its stored result, or FAILED if the gateway
        stopped while running it: at most once means it is never run a second time)."""

        def claim(conn: apsw.Connection) -> bytes | bool | None:
            rows = query(
                conn, "SELECT result FROM commands WHERE command_id = ?", (str(command_id),)
            )
            if rows:
                stored: bytes | None = rows[0][0]
                return stored if stored is not None else False
            conn.execute(
                "INSERT INTO commands(command_id, started_at) VALUES (?, ?)",
                (str(command_id), time.time()),
            )
            return None

        seen = await self._write(claim)
        if seen is None:
            return None
        if seen is False:
            return CommandResult(
                command_id=command_id,
                status=CommandStatus.FAILED,
                error=_INTERRUPTED,
            )
        assert isinstance(seen, bytes)
        return msgspec.msgpack.decode(seen, type=CommandResult)

    async def finish_command(self, result: CommandResult) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO commands(command_id, started_at, finished_at, result)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(command_id) DO UPDATE SET"
                " finished_at = excluded.finished_at, result = excluded.result",
                (
                    str(result.command_id),
                    time.time(),
                    time.time(),
                    codec.msgpack_encoder.encode(result),
                ),
            )
        )

    async def known_command_ids(self, limit: int = 1000) -> list[uuid.UUID]:
        """Ids with a stored result, newest first (sent in hello)."""
        rows = await self._write(
            lambda conn: query(
                conn,
                "SELECT command_id FROM commands WHERE result IS NOT NULL"
                " ORDER BY finished_at DESC LIMIT ?",
                (limit,),
            )
        )
        return [uuid.UUID(row[0]) for row in rows]

    # ---- commands run through the local API ------------------------------------------------

    async def begin_local_command(self, command: Command) -> None:
        """Record a new local command as started, in one commit (ids are fresh uuid4s)."""

        def claim(conn: apsw.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO commands(command_id, started_at) VALUES (?, ?)",
                (str(command.id), now),
            )
            conn.execute(
                "INSERT INTO local_commands(command_id, device_id, command, created_at)"
                " VALUES (?, ?, ?, ?)",
                (str(command.id), command.device_id or "", codec.msgpack_encoder.encode(command),
                 now),
            )  # fmt: skip

        await self._write(claim)

    async def local_commands(
        self,
        *,
        device_id: str | None = None,
        command_id: uuid.UUID | None = None,
        unreported: bool = False,
        limit: int = 100,
    ) -> list[LocalRecord]:
        """Local commands, newest first (oldest first when `unreported`)."""
        where, args = ["1 = 1"], []
        if device_id is not None:
            where.append("l.device_id = ?")
            args.append(device_id)
        if command_id is not None:
            where.append("l.command_id = ?")
            args.append(str(command_id))
        if unreported:
            where.append("l.reported = 0 AND c.result IS NOT NULL")
        order = "ASC" if unreported else "DESC"
        rows = await self._write(
            lambda conn: query(
                conn,
                "SELECT l.command, l.created_at, c.result, c.finished_at FROM local_commands l"
                " JOIN commands c ON c.command_id = l.command_id"
                f" WHERE {' AND '.join(where)}"
                f" ORDER BY l.created_at {order}, l.rowid {order} LIMIT ?",
                (*args, limit),
            )
        )
        return [
            LocalRecord(
                command=msgspec.msgpack.decode(blob, type=Command),
                created_at=dt.datetime.fromtimestamp(created, dt.UTC),
                result=msgspec.msgpack.decode(result, type=CommandResult) if result else None,
                finished_at=dt.datetime.fromtimestamp(finished, dt.UTC) if finished else None,
            )
            for blob, created, result, finished in rows
        ]

    async def mark_local_reported(self, ids: list[uuid.UUID]) -> None:
        await self._write(
            lambda conn: conn.executemany(
                "UPDATE local_commands SET reported = 1 WHERE command_id = ?",
                [(str(command_id),) for command_id in ids],
            )
        )


@dataclass
class LocalRecord:
    command: Command
    created_at: dt.datetime
    result: CommandResult | None
    finished_at: dt.datetime | None


def _close_interrupted_local_commands(conn: apsw.Connection) -> None:
    """At start nothing runs: a local command without a result was cut short by a stop."""
    rows = query(
        conn,
        "SELECT l.command_id FROM local_commands l JOIN commands c"
        " ON c.command_id = l.command_id WHERE c.result IS NULL",
    )
    for (command_id,) in rows:
        result = CommandResult(
            command_id=uuid.UUID(command_id), status=CommandStatus.FAILED, error=_INTERRUPTED
        )
        conn.execute(
            "UPDATE commands SET result = ?, finished_at = ? WHERE command_id = ?",
            (codec.msgpack_encoder.encode(result), time.time(), command_id),
        )


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class _PendingWrite:
    def __init__(self, fn: Callable[[apsw.Connection], object]) -> None:
        self.fn = fn
        self.result: object = None
        self.error: Exception | None = None
        self.done = False


def _commit(conn: apsw.Connection, batch: list[_PendingWrite]) -> None:
    """One transaction for the batch; a write that fails rolls back only its own savepoint."""
    try:
        with conn:
            for write in batch:
                try:
                    with conn:  # nested: a savepoint
                        write.result = write.fn(conn)
                except Exception as exc:
                    write.error = exc
    except apsw.Error as exc:  # the commit itself failed: nothing in the batch is saved
        for write in batch:
            write.error = write.error or exc
    finally:
        for write in batch:
            write.done = True
