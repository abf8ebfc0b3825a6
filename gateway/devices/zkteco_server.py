"""The `/iclock/` endpoints ZKTeco PUSH terminals call, on their own port (TD_ZK_LISTEN).

A thin ASGI shell: bodies are read with a cap, parsed by `iclock`, and acted on against the
`ZkPushHub`. Unknown serials get 403 and are remembered as seen; the hub's reporter sends
them upstream. Answers are plain text, as terminals expect; hypercorn adds the `Date`
header they set their clocks from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from gateway import serving
from gateway.devices import iclock
from gateway.devices.zkteco import PushTerminal, ZkPushHub, punch_event
from gateway.errors import BufferFull, GatewayError
from gateway.http_io import ClientGone, HttpError, Receive, Scope, Send, header_map, read_body
from protocol.agent import MAX_LOGS_PER_REQUEST, Log
from protocol.control import DevicesSeen, GatewayMessage

log = structlog.get_logger(__name__)

_TEXT = [(b"content-type", b"text/plain")]
# Seen terminals are reported at most this often, however many knock.
REPORT_EVERY_S = 5.0

SendUpstream = Callable[[GatewayMessage], Awaitable[None]]


class IclockApp:
    """ASGI app for the terminals; one per gateway."""

    def __init__(self, hub: ZkPushHub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, body = await self._answer(scope, receive)
        except HttpError as exc:
            status, body = exc.status, exc.detail.encode()
        except ClientGone:
            return
        await _respond(send, status, body)

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        path = scope["path"].rstrip("/").lower()
        method = scope["method"]
        if not path.startswith("/iclock/"):
            return 404, b"not found"
        try:
            params = iclock.parse_query(scope.get("query_string", b""))
            serial = iclock.serial_of(params)
        except iclock.IclockError as exc:
            return 400, str(exc).encode()
        client = scope.get("client") or ("", 0)
        address = str(client[0])
        terminal = self.hub.terminal(serial)
        if terminal is None:
            self.hub.saw_unknown(serial, address, params)
            return 403, f"UNKNOWN DEVICE {serial}: add it to this gateway first".encode()
        info = iclock.parse_info(params["info"]) if "info" in params else {}
        for key in ("devicetype", "pushver"):
            if key in params:
                info[key] = params[key]
        terminal.touch(address, info)

        match (method, path):
            case ("GET", "/iclock/cdata"):
                options = self.hub.handshake_options(terminal)
                return 200, iclock.build_options(serial, options)
            case ("POST", "/iclock/cdata"):
                body = await read_body(receive, header_map(scope), iclock.MAX_BODY_BYTES)
                return await self._upload(terminal, params.get("table", "").upper(), body)
            case ("GET", "/iclock/getrequest"):
                return 200, iclock.build_commands(terminal.take_commands())
            case ("POST", "/iclock/devicecmd"):
                body = await read_body(receive, header_map(scope), iclock.MAX_BODY_BYTES)
                return 200, self._results(terminal, body)
            case ("GET", "/iclock/ping"):
                return 200, b"OK"
        return 404, b"not found"

    async def _upload(self, terminal: PushTerminal, table: str, body: bytes) -> tuple[int, bytes]:
        try:
            if table == "ATTLOG":
                return 200, await self._punches(terminal, body)
            if table == "OPERLOG":
                parsed = iclock.parse_operlog(body)
                oper = parsed.records[0]
                log.info(
                    "zkteco.operlog",
                    serial=terminal.serial,
                    users=len(oper.users),
                    operations=oper.operations,
                    bad_lines=parsed.bad_lines,
                )
                total = oper.operations + len(oper.users) + oper.others + parsed.bad_lines
                return 200, iclock.build_uploaded(total)
        except iclock.IclockError as exc:
            return 400, str(exc).encode()
        # Photos and other tables: acknowledged and not kept, so the terminal moves on.
        return 200, b"OK"

    async def _punches(self, terminal: PushTerminal, body: bytes) -> bytes:
        parsed = iclock.parse_attlog(body)
        logs: list[Log] = []
        broken_clock = 0
        for record in parsed.records:
            event = punch_event(terminal.device_id, terminal.serial, terminal.zone, record)
            if event is None:
                broken_clock += 1
            else:
                logs.append(event)
        agent_uid = f"device:{terminal.device_id}"
        try:
            for start in range(0, len(logs), MAX_LOGS_PER_REQUEST):
                await self.hub.append_logs(agent_uid, logs[start : start + MAX_LOGS_PER_REQUEST])
        except BufferFull:
            # The terminal keeps the punches until it gets an OK: it retries after ErrorDelay.
            raise HttpError(503, "buffer_full", "the gateway buffer is full; retry later") from None
        except GatewayError as exc:
            log.error("zkteco.append_failed", serial=terminal.serial, error=str(exc))
            raise HttpError(503, "storage", "the gateway could not store the punches") from None
        if parsed.bad_lines or broken_clock:
            log.warning(
                "zkteco.bad_punches",
                serial=terminal.serial,
                unreadable=parsed.bad_lines,
                broken_clock=broken_clock,
            )
        log.info("zkteco.punches", serial=terminal.serial, count=len(logs))
        # Unusable lines are counted as taken: sending them again cannot make them usable.
        return iclock.build_uploaded(len(parsed.records) + parsed.bad_lines)

    def _results(self, terminal: PushTerminal, body: bytes) -> bytes:
        try:
            parsed = iclock.parse_devicecmd(body)
        except iclock.IclockError as exc:
            raise HttpError(400, "invalid_body", str(exc)) from None
        for answer in parsed.records:
            if not terminal.resolve(answer):
                log.info("zkteco.result_ignored", serial=terminal.serial, id=answer.command_id)
        return b"OK"


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*_TEXT, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def report_seen(hub: ZkPushHub, send_upstream: SendUpstream) -> None:
    """Send newly seen unknown terminals upstream, batched, until cancelled."""
    while True:
        await hub.seen_changed.wait()
        seen = hub.take_unreported()
        if seen:
            await send_upstream(DevicesSeen(devices=seen))
        await trio.sleep(REPORT_EVERY_S)


async def serve(
    hub: ZkPushHub,
    listen: str,
    send_upstream: SendUpstream,
    shutdown: Callable[[], Awaitable[Any]],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/iclock/` on `listen` until `shutdown` returns; reports the bound host:port."""
    config = serving.quiet_config(listen, graceful_timeout_s=1.0, backlog=1024)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report_seen, hub, send_upstream)
        await serving.serve(IclockApp(hub), config, shutdown, task_status)
        nursery.cancel_scope.cancel()
