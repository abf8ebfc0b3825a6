"""One gateway's control connection: refuse or accept, handshake, then messages both ways.

Wire format: every message is one JSON text frame, a `protocol.control` struct tagged on
`type` (the gateway may also send the same JSON in binary frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar.enums import ScopeType
from litestar.types import Receive, Scope, Send
from opentelemetry.trace import SpanKind

from backend import tracing
from backend.auth import GatewayIdentity, certificate_current, gateway_still_valid
from backend.control import state
from backend.control.hub import CLOSE_REVOKED, REVOKED_REASON, ControlHub, SessionClosed
from backend.control.status import StatusCoalescer
from backend.db import DATABASE_UNAVAILABLE
from backend.errors import Unauthorized
from backend.logging import get_logger
from backend.pki.identify import identify_gateway
from backend.pki.issuance import renew_certificate
from backend.services import Services
from protocol import codec
from protocol.codec import ProtocolError
from protocol.control import (
    MAX_CONTROL_MESSAGE_BYTES,
    AgentsSeen,
    BackendMessage,
    CertificateRenewal,
    CommandResult,
    DevicesSeen,
    DeviceState,
    Hello,
    LocalCommandRun,
    LocalCommandsAck,
    PolicyAck,
    Status,
    Welcome,
)

log = get_logger("backend.control")

CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
# last_seen_at is kept to the second: a burst of acks or results (a policy push to the whole
# fleet) then costs one UPDATE per gateway, not one per message.
TOUCH_EVERY_S = 1.0
CLOSE_PROTOCOL = 4400
CLOSE_TIMEOUT = 4408


class GatewaySession:
    def __init__(
        self, hub: ControlHub, identity: GatewayIdentity, receive: Receive, send: Send
    ) -> None:
        self.hub = hub
        self.identity = identity
        self.gateway_id = identity.gateway_id
        self.org_id = identity.org_id
        # Stored in gateway_instances.connected_instance: which instance holds the socket.
        self.connection_id = f"{hub.instance_name}/{uuid.uuid4()}"
        self.ready = asyncio.Event()
        self.finished = asyncio.Event()
        self._receive = receive
        # Raw ASGI events; typed loosely because server extensions are not in the TypedDicts.
        self._send: Any = send
        self._send_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        # Set once the close frame is out (or the peer is gone): the handler must not return
        # before, or the server would drop the socket without the close code.
        self._close_sent = asyncio.Event()
        self._close_code = CLOSE_NORMAL
        self._touched_at = -TOUCH_EVERY_S
        config = hub.services.config
        self._statuses = StatusCoalescer(
            config.heartbeat_interval,
            self._record_status,
            hub.services.metrics.control_status_coalesced.inc,
        )

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_ready(self) -> bool:
        """True once the welcome is sent; False if the session ends first."""
        if self._closed.is_set() or self.ready.is_set():
            # The usual case, and a policy fan-out asks it of every session at once.
            return not self._closed.is_set()
        ready = asyncio.ensure_future(self.ready.wait())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            closed.cancel()
        return self.ready.is_set() and not self._closed.is_set()

    async def _check_incoming(self, conn: Any) -> None:
        """Authorise one incoming message against the gateway's current key and state
        (SessionClosed after closing 4401 if revoked). At most once a second the check is
        the last_seen_at update itself, so a burst of acks costs one statement each, as
        before the check existed."""
        now = time.monotonic()
        if now - self._touched_at >= TOUCH_EVERY_S:
            self._touched_at = now
            valid = await state.touch(conn, self.gateway_id, self.identity.api_key_hash)
            if valid and self.identity.certificate_serial is not None:
                valid = await certificate_current(conn, self.identity)
        else:
            valid = await gateway_still_valid(conn, self.identity, lock=False)
        if not valid:
            await self.close(CLOSE_REVOKED, REVOKED_REASON)
            raise SessionClosed

    # ---- authorisation -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def authorised(self, *, sending: bool = True) -> AsyncIterator[Any]:
        """A connection on which this session's key was just found to be the gateway's
        current one, with the gateway enabled; otherwise the session closes (4401) and
        SessionClosed is raised.

        `sending` (what goes out: welcome, device configs, commands): the block runs in a
        transaction holding a share lock on the gateway's row, so a rotation or disable
        waits for it to end and its notice then closes the session; nothing is sent after
        a revocation. For what comes in, a check without the lock is enough.
        """
        async with self.hub.services.pool.acquire() as conn:
            transaction = conn.transaction() if sending else contextlib.nullcontext()
            async with transaction:
                if not await gateway_still_valid(conn, self.identity, lock=sending):
                    await self.close(CLOSE_REVOKED, REVOKED_REASON)
                    raise SessionClosed
                yield conn

    # ---- I/O ---------------------------------------------------------------------------

    async def send(self, message: BackendMessage) -> None:
        if self._closed.is_set():
            return
        text = codec.json_encoder.encode(message).decode()
        async with self._send_lock:
            if self._closed.is_set():
                return
            try:
                await self._send({"type": "websocket.send", "text": text})
            except (OSError, RuntimeError):
                self._gone()

    async def close(self, code: int, reason: str) -> None:
        if self._closed.is_set():
            return
        self._close_code = code
        self._closed.set()
        try:
            async with self._send_lock:
                with contextlib.suppress(OSError, RuntimeError):
                    await self._send({"type": "websocket.close", "code": code, "reason": reason})
        finally:
            self._close_sent.set()
        log.info("control closed", gateway_id=str(self.gateway_id), code=code, reason=reason)

    def _gone(self) -> None:
        """The peer is gone: nothing more can be sent, no close frame is owed."""
        self._closed.set()
        self._close_sent.set()

    async def _next_message(self, silence_s: float) -> Any:
        """The next decoded gateway message, or SessionClosed on disconnect/close/timeout."""
        receive_task = asyncio.ensure_future(self._receive())
        closed_task = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait(
                {receive_task, closed_task}, timeout=silence_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed_task.cancel()
        if receive_task not in done:
            receive_task.cancel()
            if not self._closed.is_set():
                await self.close(CLOSE_TIMEOUT, f"nothing received for {silence_s:g} s")
            raise SessionClosed
        if self._closed.is_set():
            # Closed (revoked) while the message was arriving: it is not handled.
            raise SessionClosed
        event = receive_task.result()
        if event["type"] == "websocket.disconnect":
            self._gone()
            raise SessionClosed
        data: Any = event.get("text")
        if data is None:
            data = event.get("bytes") or b""
        if len(data) > MAX_CONTROL_MESSAGE_BYTES:
            await self.close(
                CLOSE_TOO_BIG, f"a control message may be at most {MAX_CONTROL_MESSAGE_BYTES} bytes"
            )
            raise SessionClosed
        return codec.gateway_message.decode_json(data)

    # ---- the conversation --------------------------------------------------------------

    async def run(self) -> None:
        """The whole session; the hub knows it (and can revoke it) from before `hello`."""
        self.hub.admit(self)
        registered = False
        try:
            # A rotation between the upgrade's check and `admit` sent its notice before the
            # hub knew this session: look once more, now that any later notice reaches it.
            async with self.authorised(sending=False):
                pass
            silence_limit = self.hub.services.config.gateway_offline_after_s
            try:
                hello = await self._next_message(silence_limit)
            except ProtocolError as exc:
                await self.close(CLOSE_PROTOCOL, f"the first message must be hello: {exc}")
                return
            if not isinstance(hello, Hello):
                await self.close(CLOSE_PROTOCOL, "the first message must be hello")
                return
            await self.hub.register(self)
            registered = True
            await self._handshake(hello)
            log.info(
                "gateway connected",
                gateway_id=str(self.gateway_id),
                hostname=hello.hostname,
                version=hello.version,
            )
            while True:
                try:
                    message = await self._next_message(silence_limit)
                except ProtocolError as exc:
                    # One bad message is reported, not fatal: the channel stays up.
                    log.warning(
                        "bad control message", gateway_id=str(self.gateway_id), error=str(exc)
                    )
                    continue
                await self._handle(message)
        except SessionClosed:
            pass
        finally:
            await self._statuses.aclose()
            self.hub.unregister(self)
            if self._closed.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await self._close_sent.wait()
            # Shielded: a server shutting down cancels this task, and the row must still say
            # OFFLINE (the hub waits for `finished` before the pool closes).
            await asyncio.shield(self._finish(registered))

    async def _finish(self, registered: bool) -> None:
        try:
            if registered:
                async with self.hub.services.pool.acquire() as conn:
                    await state.mark_disconnected(conn, self.gateway_id, self.connection_id)
                log.info("gateway disconnected", gateway_id=str(self.gateway_id))
        except Exception as exc:
            # The sweeper marks it OFFLINE later from last_seen_at.
            log.warning(
                "could not mark gateway offline", gateway_id=str(self.gateway_id), error=str(exc)
            )
        finally:
            self.finished.set()
            self.hub.cleaned_up(self)

    async def _welcome(self, conn: Any) -> Welcome:
        services = self.hub.services
        row = await conn.fetchrow(
            "SELECT enrollment_key_encrypted FROM gateway_instances WHERE id = $1",
            self.gateway_id,
        )
        return Welcome(
            gateway_id=str(self.gateway_id),
            enrollment_key=services.secrets.decrypt(row["enrollment_key_encrypted"]),
            heartbeat_interval_s=services.config.heartbeat_interval,
            policies=await state.org_policies(conn, self.org_id),
            assignments=await state.assignments(conn, self.gateway_id),
            devices=await state.devices(conn, self.gateway_id, services.secrets),
            server_time=dt.datetime.now(dt.UTC),
            agent_access=await state.agent_access(conn, self.gateway_id),
        )

    async def _handshake(self, hello: Hello) -> None:
        # The welcome carries the enrollment key and device passwords: it is built and sent
        # only while the key is known to be current (see `authorised`).
        async with self.authorised() as conn:
            await state.mark_connected(
                conn, self.gateway_id, self.connection_id, hello.hostname, hello.version, hello
            )
            welcome = await self._welcome(conn)
            await self.send(welcome)
            # Drift repair: a revision older than current is sent again on its own as well.
            for update in welcome.policies:
                known = hello.policy_revisions.get(update.policy_id)
                if known is not None and known < update.revision:
                    await self.send(update)
        self.ready.set()
        await self.deliver_commands()

    async def send_welcome(self) -> None:
        """A fresh welcome mid-session (the gateway applies it as on connect): how a new
        enrollment key reaches the gateway."""
        async with self.authorised() as conn:
            await self.send(await self._welcome(conn))

    async def deliver_commands(
        self, command_id: uuid.UUID | None = None, traceparent: str | None = None
    ) -> None:
        """Send the open commands (or only `command_id`); `traceparent`: the trace of the
        request that created `command_id`, which its delivery continues."""
        async with self.authorised() as conn:
            commands = await state.claim_commands(conn, self.gateway_id, command_id)
            # sync_policy: the current policies and assignments go out just before it, so
            # the gateway has what to sync to when it runs the command.
            if any(c.target == "gateway" and c.command_type == "sync_policy" for c in commands):
                refresh: list[BackendMessage] = [
                    *await state.org_policies(conn, self.org_id),
                    *await state.assignments(conn, self.gateway_id),
                ]
            else:
                refresh = []
            for message in refresh:
                await self.send(message)
            for command in commands:
                parent = tracing.continued(traceparent) if command.id == command_id else None
                if parent is None:
                    await self.send(command)
                    continue
                with tracing.span(
                    "command.deliver",
                    context=parent,
                    kind=SpanKind.PRODUCER,
                    attributes={"td.command.id": str(command.id)},
                ):
                    command.traceparent = tracing.traceparent()
                    await self.send(command)

    async def resync(self) -> None:
        """After a gap in notifications: everything pending, plus current policies."""
        async with self.authorised() as conn:
            for update in await state.org_policies(conn, self.org_id):
                await self.send(update)
        await self.deliver_commands()

    async def _record_status(self, status: Status) -> None:
        try:
            async with self.authorised(sending=False) as conn:
                await state.record_status(conn, self.gateway_id, self.org_id, status)
        except SessionClosed:
            pass

    async def _handle(self, message: Any) -> None:
        if isinstance(message, Status):
            # Authorised when it is stored (at most once per heartbeat interval).
            await self._statuses.offer(message)
            return
        hub = self.hub
        async with hub.services.pool.acquire() as conn:
            await self._check_incoming(conn)
            match message:
                case AgentsSeen():
                    await state.record_agents_seen(conn, self.gateway_id, self.org_id, message)
                case PolicyAck():
                    await state.record_policy_ack(conn, self.gateway_id, self.org_id, message)
                    log.info(
                        "policy acknowledged",
                        gateway_id=str(self.gateway_id),
                        policy_id=message.policy_id,
                        revision=message.revision,
                        applied=message.applied,
                    )
                case CommandResult():
                    # Continues the gateway's run of the command: the trace comes back here.
                    with tracing.span(
                        "command.result",
                        context=tracing.continued(message.traceparent),
                        kind=SpanKind.CONSUMER,
                        attributes={
                            "td.command.id": str(message.command_id),
                            "td.command.status": str(message.status),
                        },
                    ):
                        await self._record_result(conn, message)
                case DeviceState():
                    await state.record_device_state(conn, self.gateway_id, message)
                case DevicesSeen():
                    await state.record_devices_seen(conn, self.gateway_id, self.org_id, message)
                case LocalCommandRun():
                    outcome = await state.record_local_command(conn, self.gateway_id, message)
                    if outcome not in ("recorded", "known"):
                        # Acknowledged anyway: resending could never make it storable.
                        log.warning("local command not recorded", gateway_id=str(self.gateway_id),
                                    command_id=str(message.id), reason=outcome)  # fmt: skip
                    elif outcome == "recorded":
                        log.info("local command recorded", gateway_id=str(self.gateway_id),
                                 command_id=str(message.id), type=message.command_type)  # fmt: skip
                    await self.send(LocalCommandsAck(ids=[message.id]))
                case CertificateRenewal():
                    issued = await renew_certificate(conn, hub.services, self.identity, message)
                    if issued is not None:
                        await self.send(issued)
                case Hello():
                    log.warning("hello twice on one connection", gateway_id=str(self.gateway_id))

    async def _record_result(self, conn: Any, message: CommandResult) -> None:
        if await state.record_command_result(conn, self.gateway_id, message):
            await self.hub.command_finished(message.command_id)
            log.info(
                "command finished",
                command_id=str(message.command_id),
                status=str(message.status),
                gateway_id=str(self.gateway_id),
            )


async def _deny(scope: Scope, send: Any, status: int, code: str, detail: str) -> None:
    """Refuse the upgrade with an HTTP status when the server supports it, else close."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = codec.json_encoder.encode({"error": code, "detail": detail})
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        # Closing before accepting makes the server answer 403.
        await send({"type": "websocket.close", "code": 1008, "reason": detail})


async def control_endpoint(scope: Scope, receive: Receive, asgi_send: Send) -> None:
    """`GET /v2/gateways/control`: X-API-Key checked before the upgrade is accepted."""
    send: Any = asgi_send
    services: Services = scope["app"].state.services
    if scope["type"] != ScopeType.WEBSOCKET:
        body = codec.json_encoder.encode(
            {"error": "upgrade_required", "detail": "this is the gateways' WebSocket endpoint"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 426,
                "headers": [(b"content-type", b"application/json"), (b"upgrade", b"websocket")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    hub: ControlHub | None = services.control
    if hub is None:
        await _deny(scope, send, 503, "unavailable", "the control channel is not running")
        return
    try:
        async with services.pool.acquire() as conn:
            client = scope.get("client")
            identity = await identify_gateway(
                conn,
                services.authority,
                services.config.trusted_proxies,
                headers,
                client[0] if client else None,
            )
    except Unauthorized as exc:
        log.info("control refused", reason=exc.detail)
        await _deny(scope, send, 401, exc.code, exc.detail)
        return
    except DATABASE_UNAVAILABLE as exc:
        # The key could not be checked: "try again", never a refusal of a valid key.
        log.warning("control deferred: database unavailable", error=str(exc))
        await _deny(scope, send, 503, "unavailable", "the database is not reachable; retry")
        return
    except Exception:
        # Whatever else kept the key from being checked, it is not the key's fault: a
        # refusal here would have the gateway tell its operator to rotate a valid key.
        log.exception("control deferred: the key could not be checked")
        await _deny(scope, send, 503, "unavailable", "the key could not be checked; retry")
        return
    await send({"type": "websocket.accept"})
    services.metrics.control_connections.inc()
    session = GatewaySession(hub, identity, receive, asgi_send)
    try:
        await session.run()
    except Exception:
        log.exception("control session failed", gateway_id=str(identity.gateway_id))
        await session.close(1011, "internal error; reconnect later")
