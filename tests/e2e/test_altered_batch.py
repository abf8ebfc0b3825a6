"""A batch altered in flight: a real TCP proxy between a real gateway and the backend flips
one byte of the first upload's body. The backend refuses it for its signature; the gateway
sends the batch again (signed afresh) and every log lands exactly once, nothing
dead-lettered."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.e2e import health, poll, post_logs, register, stored_ids
from tests.gateway.helpers import make_logs
from tests.gateway.process import GatewayProcess
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow

INGEST_REQUEST = b"POST /v2/ingest/logs "


class FlippingProxy:
    """Forwards 127.0.0.1:<port> to the backend; flips a byte in the body of the first
    upload it carries, and passes everything else through untouched."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.flipped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, outbound: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                if outbound and not self.flipped.is_set():
                    data = pending + data
                    pending = b""
                    start = data.find(INGEST_REQUEST)
                    if start >= 0:
                        body = data.find(b"\r\n\r\n", start) + 4
                        if body < 4 or len(data) < body + 32:
                            pending = data  # wait for the headers' end and some body
                            continue
                        altered = bytearray(data)
                        altered[body + 24] ^= 0x01
                        data = bytes(altered)
                        self.flipped.set()
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def flipping_proxy(upstream_port: int) -> Iterator[FlippingProxy]:
    proxy = FlippingProxy(upstream_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


def test_an_altered_batch_is_refused_and_the_original_lands_once(
    tmp_path: Path, database_url: str
) -> None:
    env = {"TD_HEARTBEAT_INTERVAL": "0.5"}
    with (
        running_backend(tmp_path, database_url, env=env) as backend,
        flipping_proxy(backend.port) as proxy,
    ):
        _, api_key, enrollment_key = backend.create_gateway("site")
        gateway = GatewayProcess(
            tmp_path / "gateway",
            "--backend-url", f"http://127.0.0.1:{proxy.port}",
            "--upload-backoff-base-s", "0.05",
            "--upload-backoff-cap-s", "0.5",
            env={"TD_GATEWAY_API_KEY": api_key, "TD_ENROLLMENT_KEY": enrollment_key},
        ).start()  # fmt: skip
        try:
            logs = make_logs(200)
            with httpx.Client(base_url=gateway.url, timeout=30) as agent:
                token = register(agent, enrollment_key)
                assert post_logs(agent, token, logs).status_code == 202
            expected = sorted(str(log.id) for log in logs)

            def landed() -> bool:
                stored = [i for i in stored_ids(database_url) if i in set(expected)]
                return len(stored) >= len(expected)

            poll(landed, 60, "the logs stored")
            assert proxy.flipped.is_set()
            stored = sorted(i for i in stored_ids(database_url) if i in set(expected))
            assert stored == expected, "each log exactly once"
            assert "the batch signature does not verify" in backend.log_path.read_text()
            status = health(gateway)
            assert status["queue_depth"] == 0
            assert status["dead_letter_total"] == 0
        finally:
            assert gateway.stop() == 0
