"""The control channel, gateway side: one WebSocket to `{backend}/v2/gateways/control`.

    connect (X-API-Key) -> hello -> welcome -> { status + agents_seen every heartbeat,
                                                  policies, assignments, devices, commands }

JSON text frames of `protocol.control` messages. Lost connections are retried forever with
full-jitter backoff (base 1 s, cap 60 s) so a backend restart does not meet every gateway
at once; a refused key (401/403) is logged as one clear line and retried the same way. A
peer that stops answering pings is dropped within two heartbeat intervals.

Everything the gateway sends goes through one outbox, so the device manager, command
results and the heartbeat never interleave frames, and results produced while disconnected
leave with the next connection.
"""

from __future__ import annotations

import importlib.metadata
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio
import trio_websocket

from gateway.buffer import Buffer
from gateway.client_identity import ClientIdentity
from gateway.commands import CommandRunner, DeviceHub
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.health import buffer_figures, status_report
from gateway.local_commands import LocalCommands
from gateway.state import State
from gateway.uplink import Uplink, backoff_delay
from protocol import codec
from protocol.control import (
    MAX_AGENTS_PER_REPORT,
    AgentAccess,
    AgentAssignment,
    AgentsSeen,
    BackendMessage,
    CancelCommand,
    CertificateIssued,
    CertificateRenewal,
    Command,
    CommandResult,
    DeviceConfig,
    GatewayMessage,
    Hello,
    LocalCommandsAck,
    PolicyAck,
    PolicyUpdate,
    Welcome,
)

log = structlog.get_logger("gateway.control")

CONTROL_PATH = "/v2/gateways/control"
OUTBOX_SIZE = 10_000
AGENTS_PER_REPORT = MAX_AGENTS_PER_REPORT
CONNECT_TIMEOUT_S = 15.0
# How long a command result may take to leave before a restart goes ahead anyway.
RESULT_DELIVERY_S = 3.0


def gateway_version() -> str:
    try:
        return importlib.metadata.version("td-platform")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def control_url(backend_url: str) -> str:
    """`http(s)://host[:port][/prefix]` -> `ws(s)://host[:port][/prefix]/v2/gateways/control`."""
    base = backend_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + CONTROL_PATH
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + CONTROL_PATH
    raise ValueError(f"backend URL must start with http:// or https://, got {backend_url!r}")


_Part = Callable[[trio_websocket.WebSocketConnection], Awaitable[None]]


class _Lost(Exception):
    """The connection is gone or unusable; the reason is in the message."""


@dataclass(eq=False)
class _Outgoing:
    message: GatewayMessage
    sent: trio.Event = field(default_factory=trio.Event)


class ControlChannel:
    """Start with `await nursery.start(channel.run)`; returns at once, connects in the
    background."""

    def __init__(
        self,
        config: GatewayConfig,
        state: State,
        buffer: Buffer,
        uplink: Uplink,
        devices: DeviceHub | None,
        *,
        restart: Callable[[], None],
        rng: random.Random | None = None,
        identity: ClientIdentity | None = None,
    ) -> None:
        self._config = config
        self._state = state
        self._buffer = buffer
        self._uplink = uplink
        self._devices = devices
        self._rng = rng or random.Random()
        self._identity = identity
        self._outbox, self._pending = trio.open_memory_channel[_Outgoing](OUTBOX_SIZE)
        self._nursery: trio.Nursery | None = None
        self.version = gateway_version()
        self.heartbeat_s = config.heartbeat_interval_s
        self.connected = False
        self.last_disconnect = ""
        # Set by the gateway when it serves the local API: their commands go upstream here.
        self.local_commands: LocalCommands | None = None
        self.commands = CommandRunner(
            state,
            buffer,
            uplink,
            devices,
            version=self.version,
            reack_policies=self._reack_policies,
            restart=restart,
        )

    @property
    def enabled(self) -> bool:
        return bool(self._config.backend_url and self._config.control)

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, message: GatewayMessage) -> None:
        """Queue a message for the backend; dropped (and logged) if the outbox is full."""
        self._enqueue(message)

    def _enqueue(self, message: GatewayMessage) -> _Outgoing:
        item = _Outgoing(message)
        try:
            self._outbox.send_nowait(item)
        except trio.WouldBlock:
            log.warning("control_outbox_full", dropped=type(message).__name__)
        return item

    async def _reply(self, result: CommandResult) -> None:
        # Waits (briefly) until the result has left, so a restart never outruns its answer.
        item = self._enqueue(result)
        if self.connected:
            with trio.move_on_after(RESULT_DELIVERY_S):
                await item.sent.wait()

    # ---- the connection loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.enabled:
            task_status.started()
            await trio.sleep_forever()
        url = control_url(self._config.backend_url)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery  # commands outlive any one connection
            task_status.started()
            failures = 0
            refused = False
            while True:
                welcomed, reason, status = await self._connect_once(url)
                self.last_disconnect = reason
                failures = 0 if welcomed else failures + 1
                delay = backoff_delay(
                    failures,
                    self._config.control_backoff_base_s,
                    self._config.control_backoff_cap_s,
                    self._rng,
                )
                if status in (401, 403):
                    if not refused:  # one clear line per streak, not one per attempt
                        log.error(
                            "control_refused",
                            status=status,
                            detail="the backend refused the gateway API key"
                            " (TD_GATEWAY_API_KEY); fix or rotate it",
                            retry_in_s=round(delay, 1),
                        )
                    refused = True
                else:
                    refused = False
                    log.warning("control_disconnected", reason=reason, retry_in_s=round(delay, 1))
                await trio.sleep(delay)

    async def _connect_once(self, url: str) -> tuple[bool, str, int | None]:
        """(welcome received, why it ended, HTTP status if the upgrade was refused)."""
        welcomed = False
        try:
            async with trio_websocket.open_websocket_url(
                url,
                ssl_context=self._ssl_context(url),
                extra_headers=[(b"x-api-key", self._config.api_key.encode())],
                connect_timeout=CONNECT_TIMEOUT_S,
                disconnect_timeout=2.0,
            ) as ws:
                welcome = await self._handshake(ws)
                welcomed = True
                reason = await self._session(ws, welcome)
        except trio_websocket.ConnectionRejected as exc:
            return False, f"upgrade refused with HTTP {exc.status_code}", exc.status_code
        except (
            trio_websocket.HandshakeError,
            trio_websocket.ConnectionClosed,
            trio.BrokenResourceError,
            OSError,
        ) as exc:
            return welcomed, f"{type(exc).__name__}: {exc}", None
        except codec.ProtocolError as exc:
            return welcomed, f"the backend sent an invalid message: {exc}", None
        except _Lost as exc:
            return welcomed, str(exc), None
        return welcomed, reason, None

    def _ssl_context(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("wss://"):
            return None
        if self._identity is not None:
            return self._identity.ssl_context()
        return ssl.create_default_context(cafile=self._config.ca_bundle or None)

    async def _handshake(self, ws: trio_websocket.WebSocketConnection) -> Welcome:
        hello = Hello(
            version=self.version,
            hostname=socket.gethostname()[:255] or "gateway",
            policy_revisions=self._state.policy_revisions(),
            buffer=buffer_figures(self._buffer.stats),
            known_command_ids=await self._state.known_command_ids(),
        )
        await ws.send_message(codec.json_encoder.encode(hello).decode())
        with trio.move_on_after(CONNECT_TIMEOUT_S):
            first = codec.backend_message.decode_json(await ws.get_message())
            if not isinstance(first, Welcome):
                raise _Lost(f"expected welcome, got {type(first).__name__}")
            await self._apply_welcome(first)
            return first
        raise _Lost(f"no welcome within {CONNECT_TIMEOUT_S:g} s")

    async def _session(self, ws: trio_websocket.WebSocketConnection, welcome: Welcome) -> str:
        self.heartbeat_s = welcome.heartbeat_interval_s
        log.info("control_connected", gateway_id=welcome.gateway_id, heartbeat_s=self.heartbeat_s)
        reason = "closed"
        self.connected = True
        if self.local_commands is not None:
            for report in await self.local_commands.unreported():
                self._enqueue(report)
        try:
            async with trio.open_nursery() as nursery:

                async def guarded(
                    part: Callable[[trio_websocket.WebSocketConnection], object],
                ) -> None:
                    nonlocal reason
                    try:
                        await part(ws)  # type: ignore[misc]
                    except (trio_websocket.ConnectionClosed, _Lost) as exc:
                        reason = str(exc) or type(exc).__name__
                    nursery.cancel_scope.cancel()

                nursery.start_soon(guarded, self._send_outbox)
                nursery.start_soon(guarded, self._heartbeat)
                nursery.start_soon(guarded, self._receive)
                if self._identity is not None:
                    nursery.start_soon(guarded, self._certificate)
        finally:
            self.last_disconnect = reason
            self.connected = False
        return reason

    # ---- the three parts of a session ------------------------------------------------------

    async def _send_outbox(self, ws: trio_websocket.WebSocketConnection) -> None:
        async for item in self._pending:
            await ws.send_message(codec.json_encoder.encode(item.message).decode())
            item.sent.set()

    async def _heartbeat(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            self._report_agents()
            uplink = self._uplink.health
            self._enqueue(
                status_report(
                    self._buffer.stats,
                    data_dir=self._config.data_path,
                    connected_agents=self._state.connected_agents(),
                    error_streak=uplink.error_streak,
                    last_upload_at=uplink.last_upload_at,
                    storage_problem=self._buffer.storage_problem,
                )
            )
            # A pong must come back within one interval: a dead peer is noticed in two.
            with trio.move_on_after(self.heartbeat_s) as waited:
                await ws.ping()
            if waited.cancelled_caught:
                raise _Lost(f"no pong within {self.heartbeat_s:g} s")
            await trio.sleep(self.heartbeat_s)

    async def _certificate(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Asks for a new client certificate once a third of its life is left (once per
        session), and ends the session when the certificate changes: the next one is made
        with it."""
        identity = self._identity
        assert identity is not None
        generation = identity.generation
        asked = False
        while identity.generation == generation:
            if identity.renewal_due() and not asked:
                asked = True
                log.info("client_certificate_renewal", serial=identity.serial)
                self._enqueue(CertificateRenewal(csr=identity.next_csr()))
            with trio.move_on_after(self.heartbeat_s):
                await identity.changed.wait()
        raise _Lost("the client certificate changed; reconnecting with it")

    def _report_agents(self) -> None:
        _, seen = self._state.take_seen()
        for start in range(0, len(seen), AGENTS_PER_REPORT):
            self._enqueue(AgentsSeen(agents=seen[start : start + AGENTS_PER_REPORT]))

    async def _receive(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            raw = await ws.get_message()
            try:
                message = codec.backend_message.decode_json(raw)
            except codec.ProtocolError as exc:
                log.warning("control_bad_message", error=str(exc))
                continue
            try:
                await self._handle(message)
            except GatewayError as exc:  # e.g. state.db failing: report, keep the channel
                log.error("control_message_failed", message=type(message).__name__, error=str(exc))

    # ---- what the backend says -------------------------------------------------------------

    async def _handle(self, message: BackendMessage) -> None:
        match message:
            case PolicyUpdate():
                await self._apply_policy(message)
            case AgentAssignment(agent_uid=uid, policy_id=policy_id):
                await self._state.assign(uid, policy_id)
            case AgentAccess():
                await self._apply_access(message)
            case DeviceConfig():
                await self._configure_device(message)
            case Command():
                assert self._nursery is not None
                self._nursery.start_soon(self.commands.run, message, self._reply)
            case CancelCommand(id=command_id):
                assert self._nursery is not None
                self._nursery.start_soon(self.commands.cancel, command_id, self._reply)
            case Welcome():
                await self._apply_welcome(message)
            case CertificateIssued():
                if self._identity is not None:
                    self._identity.accept(message.certificate, message.ca_certificate)
            case LocalCommandsAck(ids=ids):
                if self.local_commands is not None:
                    await self.local_commands.acknowledged(ids)

    async def _apply_welcome(self, welcome: Welcome) -> None:
        await self._state.set_setting("gateway_id", welcome.gateway_id)
        if welcome.enrollment_key:  # TD_ENROLLMENT_KEY, when set, still wins at the API
            await self._state.set_setting("enrollment_key", welcome.enrollment_key)
        for update in welcome.policies:
            await self._apply_policy(update)
        for assignment in welcome.assignments:
            await self._state.assign(assignment.agent_uid, assignment.policy_id)
        for device in welcome.devices:
            await self._configure_device(device)
        for decision in welcome.agent_access:
            await self._apply_access(decision)

    async def _apply_access(self, decision: AgentAccess) -> None:
        if await self._state.apply_access(decision):
            log.info("agent_access_changed", agent_uid=decision.agent_uid,
                     agent_id=decision.agent_id, action=decision.action)  # fmt: skip

    async def _apply_policy(self, update: PolicyUpdate) -> None:
        checksum = codec.policy_checksum(update.body)
        applied = checksum == update.checksum
        reason = None
        if applied:
            await self._state.apply_policy(update)
        else:
            reason = f"checksum mismatch: computed {checksum}, announced {update.checksum}"
            log.error("policy_rejected", policy_id=update.policy_id, revision=update.revision,
                      reason=reason)  # fmt: skip
        self._enqueue(
            PolicyAck(
                policy_id=update.policy_id,
                revision=update.revision,
                checksum=update.checksum,
                applied=applied,
                reason=reason,
            )
        )

    async def _reack_policies(self) -> dict[str, int]:
        for update in self._state.policies():
            self._enqueue(
                PolicyAck(
                    policy_id=update.policy_id,
                    revision=update.revision,
                    checksum=update.checksum,
                    applied=True,
                )
            )
        return self._state.policy_revisions()

    async def _configure_device(self, config: DeviceConfig) -> None:
        if self._devices is None:
            log.warning("device_config_ignored", device_id=config.device_id,
                        reason="this gateway runs no devices")  # fmt: skip
            return
        await self._devices.configure(config)
