"""A gateway's side of the control channel, speaking the real protocol over trio-websocket."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

from protocol import codec
from protocol.control import BackendMessage, Hello, Welcome


class FakeGateway:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.welcome: Welcome | None = None

    async def send(self, message: Any) -> None:
        await self.ws.send_message(codec.json_encoder.encode(message).decode())

    async def receive(self, within_s: float = 10.0) -> BackendMessage:
        with trio.fail_after(within_s):
            raw = await self.ws.get_message()
        return codec.backend_message.decode_json(raw)

    async def receive_type(self, cls: type[Any], within_s: float = 10.0) -> Any:
        """The next message of type `cls`, skipping others."""
        with trio.fail_after(within_s):
            while True:
                message = await self.receive(within_s)
                if isinstance(message, cls):
                    return message

    async def expect_closed(self, within_s: float = 10.0) -> int | None:
        """Wait for the backend to close the connection; returns the close code."""
        with trio.fail_after(within_s):
            try:
                while True:
                    await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                return exc.reason.code
        return None


def hello(**fields: Any) -> Hello:
    return Hello(version="test-1", hostname="edge-host", **fields)


@asynccontextmanager
async def connected_gateway(
    base_url: str, api_key: str, first: Hello | None = None
) -> AsyncIterator[FakeGateway]:
    """Connect, send hello, wait for welcome; the socket closes when the block ends."""
    url = base_url.replace("http://", "ws://") + "/v2/gateways/control"
    stream: Any = None
    try:
        async with trio_websocket.open_websocket_url(
            url, extra_headers=[(b"X-API-Key", api_key.encode())], disconnect_timeout=2
        ) as ws:
            stream = ws._stream
            gateway = FakeGateway(ws)
            await gateway.send(first or hello())
            welcome = await gateway.receive()
            assert isinstance(welcome, Welcome), welcome
            gateway.welcome = welcome
            yield gateway
    finally:
        # trio-websocket leaves its TCP socket open when the server closed the WebSocket
        # (it waits for the peer's TCP close, then never closes its own end). Closed here,
        # after the connection's own shutdown, so that shutdown is not disturbed.
        if stream is not None:
            await stream.aclose()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
