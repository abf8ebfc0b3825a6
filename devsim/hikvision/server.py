"""The simulated terminal on a socket: h11 on trio, one request per connection.

Raw h11 rather than an ASGI server because the simulator must do what a device does at the
socket level: answer every request with `Connection: close` and `Server: webs`, and during
a reboot really close its listening socket so clients get "connection refused", then bind
the same port again. Owning the listener makes that a few lines.
"""

from __future__ import annotations

from http import HTTPStatus

import h11
import structlog
import trio

from devsim.hikvision.stream import send_stream
from devsim.hikvision.terminal import (
    SimRequest,
    SimResponse,
    SimulatedTerminal,
    SimulatorConfig,
)

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 1 << 20
# A client that connects and never finishes its request must not hold a task forever.
REQUEST_READ_TIMEOUT_S = 30.0


async def serve_simulator(
    config: SimulatorConfig,
    *,
    terminal: SimulatedTerminal | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one simulated terminal until cancelled; `task_status.started(port)`."""
    terminal = terminal or SimulatedTerminal(config)
    port = config.port
    started = False
    while True:
        listeners = await trio.open_tcp_listeners(port, host=config.host)
        port = listeners[0].socket.getsockname()[1]
        if not started:
            task_status.started(port)
            started = True
        reboot = trio.Event()
        async with trio.open_nursery() as nursery:

            async def handler(stream: trio.SocketStream, reboot: trio.Event = reboot) -> None:
                await _serve_connection(stream, terminal, config, reboot)

            nursery.start_soon(trio.serve_listeners, handler, listeners)
            await reboot.wait()
            # Closing the listeners and resetting open connections is what a reboot looks
            # like from the network.
            nursery.cancel_scope.cancel()
        log.info("simulator.rebooting", port=port, downtime_s=config.reboot_s)
        await trio.sleep(config.reboot_s)
        terminal.finish_reboot()
        log.info("simulator.back", port=port)


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> SimRequest | None:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST_BYTES:
                raise h11.RemoteProtocolError("request body too large", 413)
        elif isinstance(event, h11.EndOfMessage):
            break
        else:  # ConnectionClosed or PAUSED before a full request
            return None
    assert request is not None
    peer = stream.socket.getpeername()
    return SimRequest(
        method=request.method.decode(),
        target=request.target.decode(errors="replace"),
        headers={k.decode().lower(): v.decode(errors="replace") for k, v in request.headers},
        body=bytes(body),
        client=str(peer[0]),
    )


async def _send_response(
    stream: trio.SocketStream, conn: h11.Connection, response: SimResponse
) -> None:
    headers = [
        ("Server", "webs"),
        ("Connection", "close"),
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    reason = HTTPStatus(response.status).phrase.encode()
    head = h11.Response(status_code=response.status, headers=headers, reason=reason)
    await stream.send_all(conn.send(head))
    await stream.send_all(conn.send(h11.Data(data=response.body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


async def _serve_connection(
    stream: trio.SocketStream,
    terminal: SimulatedTerminal,
    config: SimulatorConfig,
    reboot: trio.Event,
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    async with stream:
        try:
            with trio.move_on_after(REQUEST_READ_TIMEOUT_S):
                request = await _read_request(stream, conn)
            if request is None:
                return
            if config.latency_ms:
                await trio.sleep(config.latency_ms / 1000)
            try:
                response = terminal.handle(request)
            except Exception:
                # A simulator bug answers 500 for this request instead of taking the whole
                # terminal down.
                log.exception("simulator.handler_failed", target=request.target)
                response = SimResponse(status=500, content_type="text/plain")
            if response.stream:
                await send_stream(stream, terminal)
                return
            await _send_response(stream, conn, response)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                bad = SimResponse(status=exc.error_status_hint, body=b"", content_type="text/plain")
                await _send_response(stream, conn, bad)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away; nothing to answer
        if response.reboot:
            reboot.set()
