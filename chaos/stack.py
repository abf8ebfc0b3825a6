"""The stack under test: the harness's PostgreSQL, `td-backend serve`, `td-gateway run`
behind the faulty proxy, and a `td-devsim hikvision` terminal added to the gateway.

The backend and gateway processes are the ones the end-to-end tests run
(tests/support/backend.py, tests/gateway/process.py); this module only wires them together
and keeps them on fixed ports, so a restart comes back where agents and the proxy expect it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from chaos.postgres import ChaosPostgres
from tests.gateway.process import GatewayProcess
from tests.support.backend import BackendProcess, free_port

BIN = Path(sys.executable).parent
DEVSIM_START_S = 20.0
DEVSIM_USER = "admin"


class Stack:
    """Everything a chaos run starts, under one work directory; `close()` ends it all."""

    def __init__(self, workdir: Path, *, doors: int, log_level: str = "warning") -> None:
        self.workdir = workdir
        self.doors = doors
        # The services' own logs (backend/backend.log, gateway.log under the work directory).
        self.log_level = log_level
        self.postgres = ChaosPostgres(workdir / "pg")
        self.backend: BackendProcess | None = None
        self.gateway: GatewayProcess | None = None
        self.gateway_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.gateway_id = ""
        self.enrollment_key = ""
        self.device_id = ""
        self.devsim_port = 0
        self.devsim_password = secrets.token_urlsafe(12)
        self._api_key = ""
        self._devsim: subprocess.Popen[bytes] | None = None

    # ---- start-up ------------------------------------------------------------------------

    def start_database_and_backend(self) -> None:
        self.postgres.start()
        # Commands must expire in seconds, not minutes, for a run to end with none open.
        self.backend = BackendProcess(
            self.workdir / "backend",
            self.postgres.url,
            env={"TD_LOG_LEVEL": self.log_level, "TD_EXPIRY_CHECK_INTERVAL": "1"},
        )
        self.backend.start()

    def provision(self) -> None:
        """A gateway and its terminal, through the admin API as an operator would."""
        assert self.backend is not None
        self.gateway_id, self._api_key, self.enrollment_key = self.backend.create_gateway(
            "chaos-site"
        )

    def start_devsim(self) -> None:
        log_path = self.workdir / "devsim.log"
        with log_path.open("wb") as log:
            self._devsim = subprocess.Popen(
                [str(BIN / "td-devsim"), "hikvision", "--host", "127.0.0.1", "--port", "0",
                 "--user", DEVSIM_USER, "--doors", str(self.doors), "--lockout-after", "0",
                 "--event-page-size", "1000"],
                env={**os.environ, "TD_DEVSIM_PASSWORD": self.devsim_password},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + DEVSIM_START_S
        while time.monotonic() < deadline:
            found = re.search(r"http://[\d.]+:(\d+)", log_path.read_text(errors="replace"))
            if found:
                self.devsim_port = int(found.group(1))
                return
            if self._devsim.poll() is not None:
                raise RuntimeError(f"td-devsim exited: {log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        raise RuntimeError("td-devsim did not print its address in time")

    def add_device(self) -> None:
        with self.admin() as admin:
            created = admin.post(
                "/v2/devices",
                json={
                    "gateway_id": self.gateway_id,
                    "vendor": "hikvision",
                    "name": "chaos door",
                    "host": "127.0.0.1",
                    "port": self.devsim_port,
                    "username": DEVSIM_USER,
                    "password": self.devsim_password,
                },
            )
            created.raise_for_status()
            self.device_id = created.json()["id"]

    def new_gateway(self, backend_url: str) -> GatewayProcess:
        """The gateway process (not started), uploading to `backend_url` (the proxy)."""
        return GatewayProcess(
            self.workdir / "gateway",
            "--listen", f"127.0.0.1:{self.gateway_port}",
            "--backend-url", backend_url,
            # Retries come quickly and a stalled upload gives up in seconds, so faults of a
            # few seconds each are felt, and the run still drains soon after the last one.
            "--upload-backoff-base-s", "0.05",
            "--upload-backoff-cap-s", "1",
            "--upload-timeout-s", "5",
            "--control-backoff-base-s", "0.2",
            "--control-backoff-cap-s", "2",
            "--heartbeat-interval-s", "2",
            "--device-poll-s", "2",
            "--log-level", self.log_level,
            # Secrets stay out of argv, where `ps` would show them.
            env={"TD_GATEWAY_API_KEY": self._api_key, "TD_ENROLLMENT_KEY": self.enrollment_key},
        )  # fmt: skip

    def admin(self) -> httpx.Client:
        assert self.backend is not None
        return self.backend.admin()

    # ---- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything that is still running; never raises."""
        if self.gateway is not None and self.gateway.process is not None:
            with contextlib.suppress(Exception):
                self.gateway.stop(signal.SIGTERM, within_s=15)
            if self.gateway.process.poll() is None:
                self.gateway.kill()
        if self._devsim is not None and self._devsim.poll() is None:
            self._devsim.terminate()
            try:
                self._devsim.wait(10)
            except subprocess.TimeoutExpired:
                self._devsim.kill()
                self._devsim.wait()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.stop()
            self.backend.kill()
        self.postgres.stop()

    def backend_log_tail(self) -> str:
        return self.backend.log_tail() if self.backend is not None else ""

    def describe(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "gateway_url": self.gateway_url}
