"""Run the real backend (`td-backend serve`) as a subprocess for end-to-end tests.

    with running_backend(tmp_path, database_url) as backend:
        gateway_id, api_key, enrollment_key = backend.create_gateway("gw")
        backend.admin().get("/v2/gateways")      # httpx.Client with the org's admin token
        backend.stop()                            # SIGTERM + wait (an outage)
        backend.start()                           # same port, same database

`database_url` is the conftest fixture (a fresh database); the backend applies migrations
on start. The process is always gone when the block exits, even on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

TD_BACKEND = str(Path(sys.executable).parent / "td-backend")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BackendProcess:
    """One `td-backend serve` on 127.0.0.1; `url`, `admin_token` and `org_id` once started.

    `database_url=None` runs it on its embedded PostgreSQL under `data_dir/pgdata`.
    """

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None,
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        # tls: (certificate, key) of the server; it then terminates TLS itself (the direct
        # topology of gateways' client certificates) and clients verify it with the cert.
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=tls[0]) if tls else True
        )
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log_path = data_dir / "backend.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "TD_DATABASE_URL"},
            "TD_DATA_DIR": str(data_dir),
            "TD_LOG_FORMAT": "json",
            **(env or {}),
        }
        if tls:
            self.env["TD_TLS_CERT_FILE"], self.env["TD_TLS_KEY_FILE"] = map(str, tls)
        # None: the backend runs its embedded PostgreSQL under <data_dir>/pgdata.
        if database_url is not None:
            self.env["TD_DATABASE_URL"] = database_url
        self.admin_token = ""
        self.org_id = ""
        self._process: subprocess.Popen[bytes] | None = None

    def run_cli(self, *args: str) -> str:
        """Run `td-backend <args>` with this backend's environment; returns stdout."""
        done = subprocess.run(
            [TD_BACKEND, *args], env=self.env, capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"td-backend {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout.decode()

    def start(self) -> None:
        """Start (or restart) the server and wait until `GET /ready` answers 200."""
        assert self._process is None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [TD_BACKEND, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"td-backend exited on start:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.url}/ready", timeout=1.0, verify=self.verify)
                if ready.status_code == 200:
                    break
            time.sleep(0.05)
        else:
            self.kill()
            raise RuntimeError(f"td-backend not ready in {START_TIMEOUT_S}s:\n{self.log_tail()}")
        if not self.admin_token:
            created = json.loads(self.run_cli("create-org", "test-org"))
            self.org_id = created["org_id"]
            self.admin_token = created["admin_token"]

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL past a deadline); returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return process.wait()

    def kill(self) -> None:
        """SIGKILL the server and everything it started (no clean shutdown)."""
        process, self._process = self._process, None
        if process is not None:
            _kill_group(process)
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def admin(self) -> httpx.Client:
        """An httpx client on this backend with the org's admin token (close it, or use `with`)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30.0,
            verify=self.verify,
        )

    def create_gateway(self, name: str = "gw") -> tuple[str, str, str]:
        """A new gateway in the org: (gateway_id, api_key, enrollment_key)."""
        with self.admin() as client:
            response = client.post("/v2/gateways", json={"name": name})
            response.raise_for_status()
            body = response.json()
        return body["id"], body["api_key"], body["enrollment_key"]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, SIGTERM the server when the test process dies (even by SIGKILL).

    The kernel ties this to the thread that starts the child, so it is only used from the
    main thread; a worker thread that exits would otherwise take the server with it.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_death_signal


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The server runs in its own session; its group holds the granian workers too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_backend(
    tmp_path: Path,
    database_url: str,
    *,
    env: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[BackendProcess]:
    """A started backend on a free port of 127.0.0.1, with an org; always stopped on exit."""
    backend = BackendProcess(tmp_path / "backend", database_url, env=env, tls=tls)
    try:
        backend.start()
        yield backend
    finally:
        backend.stop()
        backend.kill()
