"""A backend that stops answering (a network that drops everything, not a closed socket) is
noticed by the heartbeat's ping, and the gateway reconnects once the path works again."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from gateway.app import Gateway
from tests.gateway.helpers import make_config, wait_until
from tests.support.backend import BackendProcess

pytestmark = pytest.mark.slow


class FreezableProxy:
    """A TCP proxy on 127.0.0.1:<free port> that can stop moving bytes without closing."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self._thawed = trio.Event()

    def freeze(self) -> None:
        self.frozen = True
        self._thawed = trio.Event()

    def thaw(self) -> None:
        self.frozen = False
        self._thawed.set()

    async def _wait_thawed(self) -> None:
        while self.frozen:
            await self._thawed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._connect, listeners)

    async def _connect(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, client, upstream)
            nursery.start_soon(self._pipe, upstream, client)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                await self._wait_thawed()
                await sink.send_all(data)
            await self._wait_thawed()  # a black hole does not pass the close on either
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # One direction ended and closed both ends; the other just stops.
            pass
        finally:
            await sink.aclose()


@pytest.mark.trio
async def test_a_silent_backend_is_noticed_and_the_gateway_reconnects(
    tmp_path: Path, database_url: str
) -> None:
    backend = BackendProcess(
        tmp_path / "backend", database_url, env={"TD_HEARTBEAT_INTERVAL": "0.5"}
    )
    await trio.to_thread.run_sync(backend.start)
    try:
        _, api_key, _ = await trio.to_thread.run_sync(backend.create_gateway, "gw")
        proxy = FreezableProxy(backend.port)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(proxy.serve)
            config = make_config(
                tmp_path / "gw",
                backend_url=f"http://127.0.0.1:{port}",
                api_key=api_key,
                control=True,
                control_backoff_base_s=0.1,
                control_backoff_cap_s=0.5,
            )
            gateway = Gateway(config)
            await nursery.start(gateway.run)
            await wait_until(lambda: gateway.control.connected, within_s=30)
            assert gateway.control.heartbeat_s == 0.5  # from the welcome

            proxy.freeze()
            await wait_until(lambda: not gateway.control.connected, within_s=30)
            assert "no pong" in gateway.control.last_disconnect
            proxy.thaw()
            await wait_until(lambda: gateway.control.connected, within_s=60)
            gateway.request_stop()
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(backend.stop)
        await trio.to_thread.run_sync(backend.kill)
