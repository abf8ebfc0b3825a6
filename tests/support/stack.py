"""A whole site for browser tests and screenshots: `td-backend serve`, `td-devsim hikvision`
and, when asked, `td-gateway run` with the simulated terminal added as a door.

    with site(tmp_path, database_url) as s:   # backend + simulator, gateway created (OFFLINE)
        s.start_gateway()                      # the real gateway connects; ONLINE soon after
        s.admin                                # httpx client with the org's admin token

Secrets go through the environment, never argv (`ps` shows argv).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.gateway.process import GatewayProcess
from tests.support.backend import BackendProcess

TD_DEVSIM = str(Path(sys.executable).with_name("td-devsim"))
DOOR_PASSWORD = "Door-Sim-Pw-1"


@contextlib.contextmanager
def running_devsim(password: str = DOOR_PASSWORD) -> Iterator[int]:
    """`td-devsim hikvision` on a free port; yields the port."""
    process = subprocess.Popen(
        [TD_DEVSIM, "hikvision", "--port", "0", "--reboot-s", "2"],
        env={**os.environ, "TD_DEVSIM_PASSWORD": password},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"http://[\d.]+:(\d+)", process.stdout.readline())
        assert match, "td-devsim did not print its URL"
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        if process.stdout is not None:
            process.stdout.close()


@dataclass
class Site:
    backend: BackendProcess
    admin: httpx.Client
    data_dir: Path
    devsim_port: int
    gateway_id: str
    api_key: str
    gateway: GatewayProcess | None = None
    devices: dict[str, str] = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return f"{self.backend.url}/dashboard"

    def start_gateway(self) -> GatewayProcess:
        self.gateway = GatewayProcess(
            self.data_dir / "gateway",
            "--backend-url",
            self.backend.url,
            *("--control-backoff-base-s", "0.2", "--control-backoff-cap-s", "1"),
            *("--device-poll-s", "1"),
            env={"TD_GATEWAY_API_KEY": self.api_key},
        ).start()
        return self.gateway

    def add_door(self, name: str, password: str = DOOR_PASSWORD) -> str:
        created = self.admin.post(
            "/v2/devices",
            json={
                "gateway_id": self.gateway_id,
                "vendor": "hikvision",
                "name": name,
                "host": "127.0.0.1",
                "port": self.devsim_port,
                "username": "admin",
                "password": password,
            },
        )
        assert created.status_code == 201, created.text
        self.devices[name] = created.json()["id"]
        return self.devices[name]

    def add_policy(self, name: str, body: dict[str, Any]) -> str:
        created = self.admin.post("/v2/policies", json={"name": name, "body": body})
        assert created.status_code == 201, created.text
        policy_id: str = created.json()["id"]
        return policy_id


@contextlib.contextmanager
def site(
    data_dir: Path,
    database_url: str | None,
    gateway_name: str = "site",
    backend_env: dict[str, str] | None = None,
) -> Iterator[Site]:
    """Backend and simulator running, one gateway created (not started); all stopped on exit."""
    backend = BackendProcess(data_dir / "backend", database_url, env=backend_env)
    gateway: GatewayProcess | None = None
    try:
        backend.start()
        with running_devsim() as port, backend.admin() as admin:
            gateway_id, api_key, _ = backend.create_gateway(gateway_name)
            s = Site(backend, admin, data_dir, port, gateway_id, api_key)
            try:
                yield s
            finally:
                gateway = s.gateway
                if gateway is not None and gateway.process is not None:
                    gateway.stop()
    finally:
        backend.stop()
        backend.kill()
