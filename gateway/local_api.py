"""The local operator API on `TD_LOCAL_LISTEN`: doors that open when the cloud is gone.

Its own listener and its own bearer token (`td-gateway local-token`), not the agents' port:
operators on site reach it, agents never need to. The paths mirror the backend's, so one
client works against both:

    GET  /v2/devices                                   the devices configured on this gateway
    POST /v2/devices/{id}/commands[?wait=S]            {"type", "payload"?, "expires_in_s"?}
    GET  /v2/devices/{id}/commands                     local commands, newest first
    GET  /v2/devices/{id}/commands/{cid}[?wait=S]      long-polls until terminal

A command answers 202 while it runs and 200 once it is terminal (with `?wait=S`, within S).
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import structlog
import trio
from msgspec import Meta

from gateway import serving
from gateway.devices.manager import DeviceManager
from gateway.http_io import (
    ClientGone,
    HttpError,
    Receive,
    Scope,
    Send,
    header_map,
    read_body,
    respond_error,
    respond_json,
)
from gateway.local_commands import LocalCommands, TooBusy
from gateway.local_token import LocalToken
from gateway.state import LocalRecord
from protocol.control import DEVICE_COMMAND_TYPES

log = structlog.get_logger("gateway.local_api")

BODY_MAX_BYTES = 64 * 1024
MAX_WAIT_S = 60.0
DEFAULT_EXPIRES_S = 60.0
MAX_LIST = 100
_COMMANDS = re.compile(r"^/v2/devices/([^/]{1,256})/commands(?:/([^/]{1,64}))?/?$")
_NO_TOKEN = HttpError(
    401,
    "unauthorized",
    "missing or invalid bearer token; mint one on the gateway with `td-gateway local-token`",
    {"WWW-Authenticate": "Bearer"},
)


class CommandCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Annotated[str, Meta(min_length=1, max_length=64)]
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    expires_in_s: Annotated[float, Meta(gt=0, le=3600)] = DEFAULT_EXPIRES_S


class CommandOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    type: str
    status: str
    result: dict[str, Any] | None
    error: str | None
    payload: dict[str, Any]
    device_id: str
    origin: str = "local"
    created_at: str
    finished_at: str | None
    expires_at: str


_create = msgspec.json.Decoder(CommandCreate)


def command_out(record: LocalRecord) -> CommandOut:
    command, result = record.command, record.result
    return CommandOut(
        id=command.id,
        type=command.command_type,
        status=result.status.value if result else "SENT",
        result=result.result if result else None,
        error=result.error if result else None,
        payload=command.payload,
        device_id=command.device_id or "",
        created_at=record.created_at.isoformat(),
        finished_at=record.finished_at.isoformat() if record.finished_at else None,
        expires_at=command.expires_at.isoformat(),
    )


def _wait_seconds(query: dict[str, list[str]]) -> float:
    text = query.get("wait", ["0"])[-1]
    try:
        value = float(text)
    except ValueError:
        raise HttpError(400, "invalid_query", f"wait: not a number of seconds ({text!r})") from None
    if not 0 <= value <= MAX_WAIT_S:
        raise HttpError(400, "invalid_query", f"wait: must be between 0 and {MAX_WAIT_S:g} s")
    return value


class LocalApi:
    """The ASGI application."""

    def __init__(self, token: LocalToken, devices: DeviceManager, local: LocalCommands) -> None:
        self._token = token
        self._devices = devices
        self._local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            self._authenticate(scope)
            await self._route(scope, receive, send)
        except HttpError as exc:
            await respond_error(send, exc)
        except ClientGone:
            pass

    def _authenticate(self, scope: Scope) -> None:
        scheme, _, token = header_map(scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._token.verify(token.strip()):
            raise _NO_TOKEN

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path.rstrip("/") == "/v2/devices":
            if method != "GET":
                raise HttpError(405, "method_not_allowed", f"{method} {path}")
            await respond_json(send, 200, {"items": self._devices.describe(), "next_cursor": None})
            return
        match = _COMMANDS.match(path)
        if match is None:
            raise HttpError(404, "not_found", f"no route {path}")
        device_id, command_id = match.groups()
        if not self._local.knows_device(device_id):
            raise HttpError(404, "not_found", f"no device {device_id!r} on this gateway")
        if command_id is not None:
            if method != "GET":
                raise HttpError(405, "method_not_allowed", f"{method} {path}")
            await self._get_command(send, device_id, command_id, _wait_seconds(query))
        elif method == "POST":
            await self._create_command(scope, receive, send, device_id, _wait_seconds(query))
        elif method == "GET":
            records = await self._local.listing(device_id, MAX_LIST)
            items = [command_out(record) for record in records]
            await respond_json(send, 200, {"items": items, "next_cursor": None})
        else:
            raise HttpError(405, "method_not_allowed", f"{method} {path}")

    async def _create_command(
        self, scope: Scope, receive: Receive, send: Send, device_id: str, wait_s: float
    ) -> None:
        body = await read_body(receive, header_map(scope), BODY_MAX_BYTES)
        try:
            data = _create.decode(body)
        except msgspec.DecodeError as exc:
            raise HttpError(400, "invalid_body", str(exc)) from None
        if data.type not in DEVICE_COMMAND_TYPES:
            known = ", ".join(DEVICE_COMMAND_TYPES)
            raise HttpError(400, "invalid_body", f"type: must be one of {known}")
        try:
            command_id = await self._local.submit(
                device_id, data.type, data.payload, data.expires_in_s
            )
        except TooBusy as exc:
            raise HttpError(503, "busy", str(exc), {"Retry-After": "1"}) from None
        await self._answer(send, command_id, wait_s)

    async def _get_command(self, send: Send, device_id: str, text: str, wait_s: float) -> None:
        try:
            command_id = uuid.UUID(text)
        except ValueError:
            raise HttpError(404, "not_found", f"no command {text!r} here") from None
        await self._answer(send, command_id, wait_s, device_id)

    async def _answer(
        self, send: Send, command_id: uuid.UUID, wait_s: float, device_id: str | None = None
    ) -> None:
        record = await self._local.get(command_id, wait_s)
        if record is None or (device_id is not None and record.command.device_id != device_id):
            raise HttpError(404, "not_found", f"no local command {command_id} here")
        await respond_json(send, 200 if record.result else 202, command_out(record))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def serve(
    app: LocalApi,
    listen: str,
    shutdown: Callable[[], Awaitable[Any]],
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the local API on `listen` until `shutdown` returns; reports the bound host:port."""
    config = serving.quiet_config(listen, graceful_timeout_s=1.0)
    await serving.serve(app, config, shutdown, task_status)
