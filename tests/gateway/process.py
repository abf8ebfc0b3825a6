"""Runs `td-gateway run` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GATEWAY = str(Path(sys.executable).with_name("td-gateway"))


class GatewayProcess:
    """One `td-gateway run` process on port 0; `url` is known once it listens."""

    def __init__(self, data_dir: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.flags = ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *flags]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, within_s: float = 20.0) -> GatewayProcess:
        address_file = self.data_dir / "gateway.addr"
        address_file.unlink(missing_ok=True)
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [GATEWAY, "run", *self.flags], env=self.env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + within_s
        while not address_file.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"td-gateway exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError("td-gateway did not start listening in time")
            time.sleep(0.05)
        self.url = "http://" + address_file.read_text().strip()
        return self

    def stop(self, sig: int = signal.SIGTERM, within_s: float = 10.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(within_s)
        if code != 0:
            # Shown with the failing test: why the gateway did not stop cleanly.
            print(f"td-gateway exited with {code}; its last log lines:")
            print("\n".join(self.log_text().splitlines()[-40:]))
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def log_text(self) -> str:
        path = self.data_dir.parent / f"{self.data_dir.name}.log"
        return path.read_text() if path.exists() else ""
