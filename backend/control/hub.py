"""Which gateways are connected to this instance, and the LISTEN/NOTIFY that links instances.

Every change an operator makes (a policy revision, a command, a device) is announced with
NOTIFY on one channel, carrying ids only (and a new command's trace context, so its
delivery joins the trace of the request that created it). Every instance LISTENs; the one
holding the gateway's socket reads the rows and sends. Changes made through this very
instance take the same path, so there is one delivery mechanism to get right.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import msgspec

from backend import tracing
from backend.control import state
from backend.logging import get_logger
from protocol.control import CancelCommand

if TYPE_CHECKING:
    from backend.control.session import GatewaySession
    from backend.services import Services

log = get_logger("backend.control")

CHANNEL = "td_control"
CLOSE_REVOKED = 4401
REVOKED_REASON = "the API key was rotated or the gateway disabled"


class SessionClosed(Exception):
    """The peer went away or the session was closed here."""


class Notice(msgspec.Struct, omit_defaults=True):
    """A NOTIFY payload: what changed, by id."""

    kind: str
    gateway_id: str | None = None
    org_id: str | None = None
    id: str | None = None
    connection_id: str | None = None
    # A new command's: the trace its delivery continues (backend/tracing.py).
    traceparent: str | None = None


_notice = msgspec.json.Decoder(Notice)


class ControlHub:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.sessions: dict[uuid.UUID, GatewaySession] = {}
        # Every accepted socket, from before its hello until its cleanup is done (`sessions`
        # holds only the current, greeted one per gateway): revocation reaches all of them.
        self._live: set[GatewaySession] = set()
        self._listener: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._command_waiters: dict[uuid.UUID, asyncio.Event] = {}
        self.instance_name = (
            services.config.instance_name or f"{socket.gethostname()}:{os.getpid()}"
        )

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self._listen()
        self._supervisor = asyncio.create_task(self._keep_listening())

    def begin_shutdown(self) -> None:
        """Close every session now (the server is stopping); safe to call from a signal handler."""
        for session in list(self.sessions.values()):
            self._spawn(session.close(1001, "backend shutting down"))

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for session in list(self.sessions.values()):
            await session.close(1001, "backend shutting down")
        # Let every session, also ones already unregistered, record its disconnect while
        # the pool is still open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.gather(*(s.finished.wait() for s in list(self._live)))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self.services.config.database_url)
        await self._listener.add_listener(CHANNEL, self._on_notify)

    async def _keep_listening(self) -> None:
        """Reconnect the LISTEN connection when it drops, then resend what may have been missed."""
        while True:
            await asyncio.sleep(1.0)
            if self._listener is not None and not self._listener.is_closed():
                continue
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("control listener reconnect failed", error=str(exc))
                continue
            log.info("control listener reconnected", sessions=len(self.sessions))
            for session in list(self.sessions.values()):
                self._spawn(session.resync())

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except SessionClosed:
                pass
            except Exception:
                log.exception("control notification failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- announcing changes (any instance) ---------------------------------------------

    async def _notify(self, notice: Notice) -> None:
        async with self.services.pool.acquire() as conn:
            await conn.execute(
                "SELECT pg_notify($1, $2)", CHANNEL, msgspec.json.encode(notice).decode()
            )

    async def policy_changed(self, org_id: uuid.UUID, policy_id: uuid.UUID | None) -> None:
        """Push a policy to the org's gateways; None: every policy (the default moved)."""
        await self._notify(
            Notice("policy", org_id=str(org_id), id=str(policy_id) if policy_id else None)
        )

    async def agent_assigned(self, gateway_id: uuid.UUID, agent_id: uuid.UUID) -> None:
        await self._notify(Notice("assignment", gateway_id=str(gateway_id), id=str(agent_id)))

    async def device_changed(self, gateway_id: uuid.UUID, device_id: uuid.UUID) -> None:
        await self._notify(Notice("device", gateway_id=str(gateway_id), id=str(device_id)))

    async def device_deleted(self, gateway_id: uuid.UUID, device_id: uuid.UUID) -> None:
        await self._notify(Notice("device_deleted", gateway_id=str(gateway_id), id=str(device_id)))

    async def agent_access_changed(self, gateway_id: uuid.UUID) -> None:
        """An agent of the gateway was revoked, reset or deleted."""
        await self._notify(Notice("agent_access", gateway_id=str(gateway_id)))

    async def gateway_revoked(self, gateway_id: uuid.UUID) -> None:
        await self._notify(Notice("revoked", gateway_id=str(gateway_id)))

    async def enrollment_key_rotated(self, gateway_id: uuid.UUID) -> None:
        await self._notify(Notice("enrollment_key", gateway_id=str(gateway_id)))

    async def command_created(self, gateway_id: uuid.UUID, command_id: uuid.UUID) -> None:
        await self._notify(
            Notice(
                "command",
                gateway_id=str(gateway_id),
                id=str(command_id),
                traceparent=tracing.traceparent() or None,
            )
        )

    async def command_canceled(self, gateway_id: uuid.UUID, command_id: uuid.UUID) -> None:
        await self._notify(Notice("cancel", gateway_id=str(gateway_id), id=str(command_id)))

    async def command_finished(self, command_id: uuid.UUID) -> None:
        await self._notify(Notice("command_done", id=str(command_id)))

    async def session_started(self, gateway_id: uuid.UUID, connection_id: str) -> None:
        await self._notify(
            Notice("connected", gateway_id=str(gateway_id), connection_id=connection_id)
        )

    # ---- waiting for commands ----------------------------------------------------------

    async def wait_for_command(
        self, command_id: uuid.UUID, wait_s: float, is_done: Callable[[], Awaitable[bool]]
    ) -> None:
        """Return once `is_done()` holds or `wait_s` passes, waking on command_done notices."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not await is_done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            event = self._command_waiters.setdefault(command_id, asyncio.Event())
            # Re-check after registering: a notice may have landed in between.
            if await is_done():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()
            if self._command_waiters.get(command_id) is event and event.is_set():
                del self._command_waiters[command_id]

    # ---- sessions on this instance -----------------------------------------------------

    def admit(self, session: GatewaySession) -> None:
        """Track an accepted socket at once, so a revocation closes it even before hello."""
        self._live.add(session)

    async def close_gateway(self, gateway_id: uuid.UUID, code: int, reason: str) -> None:
        """Close every socket of the gateway held here, greeted or not."""
        targets = [s for s in list(self._live) if s.gateway_id == gateway_id]
        await asyncio.gather(*(s.close(code, reason) for s in targets))

    async def close_revoked(self) -> int:
        """Close sockets whose key is no longer their gateway's (or whose gateway is
        disabled or gone, or whose client certificate was revoked, superseded or expired):
        a backstop for a notice lost while the listener reconnected."""
        live = [s for s in list(self._live) if not s.closed]
        if not live:
            return 0
        async with self.services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, api_key_hash FROM gateway_instances"
                " WHERE id = ANY($1::uuid[]) AND disabled_at IS NULL",
                list({s.gateway_id for s in live}),
            )
        current = {row["id"]: row["api_key_hash"] for row in rows}
        serials = [s.identity.certificate_serial for s in live if s.identity.certificate_serial]
        current_serials: set[str] = set()
        if serials:
            async with self.services.pool.acquire() as conn:
                valid = await conn.fetch(
                    "SELECT serial FROM gateway_certificates WHERE serial = ANY($1::text[])"
                    " AND revoked_at IS NULL AND not_after > now()",
                    serials,
                )
            current_serials = {row["serial"] for row in valid}
        stale = [
            s
            for s in live
            if current.get(s.gateway_id) != s.identity.api_key_hash
            or (
                s.identity.certificate_serial
                and s.identity.certificate_serial not in current_serials
            )
        ]
        await asyncio.gather(*(s.close(CLOSE_REVOKED, REVOKED_REASON) for s in stale))
        return len(stale)

    async def register(self, session: GatewaySession) -> None:
        """Make `session` the gateway's connection; any older one, here or elsewhere, closes."""
        previous = self.sessions.get(session.gateway_id)
        self.sessions[session.gateway_id] = session
        self._live.add(session)
        if previous is not None and previous is not session:
            await previous.close(4409, "replaced by a newer connection of the same gateway")
        await self.session_started(session.gateway_id, session.connection_id)

    def unregister(self, session: GatewaySession) -> None:
        if self.sessions.get(session.gateway_id) is session:
            del self.sessions[session.gateway_id]

    def cleaned_up(self, session: GatewaySession) -> None:
        self._live.discard(session)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            notice = _notice.decode(payload)
        except msgspec.DecodeError:
            log.warning("unreadable control notice", payload=payload[:200])
            return
        self._spawn(self._dispatch(notice))

    async def _dispatch(self, notice: Notice) -> None:
        if notice.kind == "command_done":
            event = self._command_waiters.get(uuid.UUID(notice.id))
            if event is not None:
                event.set()
            return
        if notice.kind == "policy":
            org_id = uuid.UUID(notice.org_id)
            targets = [s for s in self.sessions.values() if s.org_id == org_id]
            if not targets:
                return
            async with self.services.pool.acquire() as conn:
                if notice.id is None:
                    updates = await state.org_policies(conn, org_id)
                else:
                    update = await state.policy(conn, org_id, uuid.UUID(notice.id))
                    updates = [update] if update is not None else []
                valid = await conn.fetch(
                    "SELECT id, api_key_hash FROM gateway_instances"
                    " WHERE org_id = $1 AND disabled_at IS NULL",
                    org_id,
                )
            # Only to sessions whose key is still current (the rest close on their notice).
            current = {row["id"]: row["api_key_hash"] for row in valid}
            targets = [s for s in targets if current.get(s.gateway_id) == s.identity.api_key_hash]
            # All sessions at once: one slow socket must not hold back the rest of the fleet.
            outcomes = await asyncio.gather(
                *(self._send_when_ready(session, updates) for session in targets),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    log.error("policy push failed", error=repr(outcome))
            return
        if notice.kind == "revoked" and notice.gateway_id:
            # Every socket of the gateway, also ones that have not said hello yet.
            await self.close_gateway(uuid.UUID(notice.gateway_id), CLOSE_REVOKED, REVOKED_REASON)
            return
        found = self.sessions.get(uuid.UUID(notice.gateway_id)) if notice.gateway_id else None
        if found is None:
            return
        session = found
        if not await session.wait_ready():
            return
        match notice.kind:
            case "connected" if notice.connection_id != session.connection_id:
                await session.close(4409, "replaced by a newer connection of the same gateway")
            case "assignment":
                async with session.authorised() as conn:
                    assigned = await state.assignments(
                        conn, session.gateway_id, uuid.UUID(notice.id)
                    )
                    await self._send_all(session, assigned)
            case "device":
                # Device configs carry passwords: sent only while the key is current.
                async with session.authorised() as conn:
                    configs = await state.devices(
                        conn, session.gateway_id, self.services.secrets, uuid.UUID(notice.id)
                    )
                    await self._send_all(session, configs)
            case "device_deleted":
                await session.send(state.deleted_device(uuid.UUID(notice.id)))
            case "enrollment_key":
                await session.send_welcome()
            case "agent_access":
                # The whole (short) list: the gateway skips what it has applied already.
                async with self.services.pool.acquire() as conn:
                    decisions = await state.agent_access(conn, session.gateway_id)
                await self._send_all(session, decisions)
            case "command":
                await session.deliver_commands(uuid.UUID(notice.id), notice.traceparent)
            case "cancel":
                await session.send(CancelCommand(id=uuid.UUID(notice.id)))

    async def _send_when_ready(self, session: GatewaySession, messages: list[Any]) -> None:
        if await session.wait_ready():
            await self._send_all(session, messages)

    async def _send_all(self, session: GatewaySession, messages: list[Any]) -> None:
        for message in messages:
            await session.send(message)
