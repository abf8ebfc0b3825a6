"""A TCP proxy between the gateway and the backend that can cut or stall the path.

    cut(seconds)    every open connection is reset and the port refuses new ones (the
                    listening socket is closed), then it listens again on the same port
    stall(seconds)  connections are accepted but not a byte moves either way; when the
                    stall ends, what was held is forwarded (a late request is a real thing
                    on a WAN: it must not create a second row)

The gateway's `TD_BACKEND_URL` points here, so both its uploads and its WebSocket control
channel go through it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

import trio

CHUNK = 65536
# The port was ours a moment ago; another process may hold it briefly while closing.
REBIND_ATTEMPTS = 200


class FaultyProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`upstream_port`; `await nursery.start(proxy.serve)`.

    `cut()` and `stall()` are a fault for some seconds; `begin_*`/`end_*` are the same in
    two steps, each returning once the proxy really is in the new state.
    """

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.connections_total = 0
        self._streams: set[trio.SocketStream] = set()
        self._flowing = trio.Event()
        self._flowing.set()
        self._may_listen = trio.Event()
        self._may_listen.set()
        self._listening = trio.Event()
        self._refusing = trio.Event()
        self._listener_scope = trio.CancelScope()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        async with trio.open_nursery() as nursery:
            while True:
                await self._may_listen.wait()
                listeners = await self._listen()
                with self._listener_scope:
                    self._listening.set()
                    if not started:
                        task_status.started(self.port)
                        started = True
                    try:
                        await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)
                    finally:
                        for listener in listeners:
                            listener.socket.close()
                self._refusing.set()

    async def cut(self, seconds: float) -> int:
        """Reset every connection and refuse new ones for `seconds`; returns how many were
        reset (each proxied connection counts twice: the gateway's side and the backend's)."""
        reset = await self.begin_cut()
        await trio.sleep(seconds)
        await self.end_cut()
        return reset

    async def begin_cut(self) -> int:
        self._may_listen = trio.Event()
        self._refusing = trio.Event()
        self._listener_scope.cancel()
        streams = list(self._streams)
        for stream in streams:
            _reset(stream)
        await self._refusing.wait()
        return len(streams)

    async def end_cut(self) -> None:
        self._listening = trio.Event()
        self._listener_scope = trio.CancelScope()
        self._may_listen.set()
        await self._listening.wait()

    async def stall(self, seconds: float) -> None:
        """Move no bytes for `seconds`, then forward what was held."""
        self.begin_stall()
        await trio.sleep(seconds)
        self.end_stall()

    def begin_stall(self) -> None:
        self._flowing = trio.Event()

    def end_stall(self) -> None:
        self._flowing.set()

    async def _listen(self) -> list[trio.SocketListener]:
        for _ in range(REBIND_ATTEMPTS):
            try:
                listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                await trio.sleep(0.05)
                continue
            self.port = listeners[0].socket.getsockname()[1]
            return listeners
        raise OSError(errno.EADDRINUSE, f"proxy port {self.port} stays in use")

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.connections_total += 1
        self._streams.add(downstream)
        try:
            await self._flowing.wait()
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            except OSError:
                _reset(downstream)
                return
            self._streams.add(upstream)
            try:
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._pump, downstream, upstream, pumps.cancel_scope)
                    pumps.start_soon(self._pump, upstream, downstream, pumps.cancel_scope)
            finally:
                self._streams.discard(upstream)
                await trio.aclose_forcefully(upstream)
        finally:
            self._streams.discard(downstream)
            await trio.aclose_forcefully(downstream)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await source.receive_some(CHUNK)
                await self._flowing.wait()
                if not data:
                    # Half-close: pass the end of stream on, keep the other direction going.
                    try:
                        await sink.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        both.cancel()
                    return
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            both.cancel()


def _reset(stream: trio.SocketStream) -> None:
    """Close with an RST (SO_LINGER 0), as a dropped NAT entry or a middlebox restart does."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Tasks blocked on this socket wake with ClosedResourceError.
    stream.socket.close()
