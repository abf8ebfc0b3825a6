"""The chaos proxy's faults are real: a cut resets open connections and refuses new ones
until it ends, a stall moves no byte until it ends and then delivers what it held. If they
were not, `make chaos` would pass without having tested anything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from chaos.faults import KINDS, schedule
from chaos.proxy import FaultyProxy


class Upstream:
    """An echo server that remembers what reached it."""

    def __init__(self) -> None:
        self.received = b""
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            async for data in stream:
                self.received += data
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


@asynccontextmanager
async def proxied() -> AsyncIterator[tuple[FaultyProxy, Upstream]]:
    upstream = Upstream()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, upstream.handle, 0, host="127.0.0.1")
        )
        proxy = FaultyProxy(upstream_port=listeners[0].socket.getsockname()[1])
        await nursery.start(proxy.serve)
        yield proxy, upstream
        nursery.cancel_scope.cancel()


async def echo(stream: trio.SocketStream, data: bytes) -> bytes:
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        chunk = await stream.receive_some()
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.trio
async def test_a_cut_resets_open_connections_and_refuses_until_it_ends() -> None:
    async with proxied() as (proxy, _):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await echo(stream, b"before") == b"before"

        assert await proxy.begin_cut() == 2  # the client's side and the upstream side
        with pytest.raises(trio.BrokenResourceError):
            await echo(stream, b"during")
            # A reset may surface on the next call rather than the first.
            await echo(stream, b"during")
        await stream.aclose()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", proxy.port)

        await proxy.end_cut()
        again = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await echo(again, b"after") == b"after"
        await again.aclose()


@pytest.mark.trio
async def test_a_stall_holds_every_byte_then_delivers_it_late() -> None:
    async with proxied() as (proxy, upstream):
        open_before = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        assert await echo(open_before, b"a") == b"a"

        proxy.begin_stall()
        await open_before.send_all(b"held")
        opened_during = await trio.open_tcp_stream("127.0.0.1", proxy.port)  # still accepted
        await opened_during.send_all(b"new")
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert upstream.received == b"a"
        assert upstream.connections == 1

        proxy.end_stall()
        assert await open_before.receive_some() == b"held"
        assert await opened_during.receive_some() == b"new"
        assert upstream.connections == 2
        await open_before.aclose()
        await opened_during.aclose()


def test_the_schedule_is_the_seeds_and_holds_every_fault_asked_for() -> None:
    each = dict.fromkeys(KINDS, 3)
    first = schedule(42, 120.0, each)
    assert first == schedule(42, 120.0, each)
    assert first != schedule(43, 120.0, each)
    assert sorted(f.kind for f in first) == sorted(k for k in KINDS for _ in range(3))
    starts = [f.at_s for f in first]
    assert starts == sorted(starts)
    assert starts[0] > 0 and starts[-1] < 120.0
