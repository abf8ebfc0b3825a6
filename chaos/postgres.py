"""The PostgreSQL the chaos run owns, so it can restart it and cut its connections.

pgserver creates and first starts the cluster (it knows how to run it as an unprivileged user
when we are root); restarts go through pg_ctl from pgserver's own binaries with the same
options, listening only on a Unix socket under the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import asyncpg  # type: ignore[import-untyped]

DATABASE = "td"
PG_CTL_TIMEOUT_S = 60

StopMode = Literal["fast", "immediate"]


class PostgresControlError(RuntimeError):
    """pg_ctl failed; the message holds what it said."""


class ChaosPostgres:
    """A PostgreSQL cluster under `pgdata` with a `td` database; `url` once started."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.url = ""
        self.admin_url = ""
        self._socket_dir = ""
        self._system_user: str | None = None

    def start(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pgserver.postgres_server import get_server

        logging.getLogger("pgserver").setLevel(logging.WARNING)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the cluster outlives pgserver's handle; stop() ends it.
        server = get_server(self.pgdata, cleanup_mode=None)
        if "(1 row)" not in server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';"):
            server.psql(f"CREATE DATABASE {DATABASE};")
        info = server.get_postmaster_info()
        self._socket_dir = str(info.socket_dir)
        self._system_user = server.system_user
        self.url = str(server.get_uri(DATABASE))
        self.admin_url = str(server.get_uri("postgres"))

    def stop_now(self, mode: StopMode) -> None:
        """`fast` disconnects clients and checkpoints; `immediate` is a crash (recovery runs
        on the next start)."""
        self._pg_ctl("-w", "-m", mode, "stop")

    def start_again(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}",
            "-l", str(self.pgdata / "log"), "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the cluster for good; when pg_ctl cannot, signal the postmaster directly
        (SIGINT is PostgreSQL's fast shutdown)."""
        try:
            self._pg_ctl("-w", "-m", "fast", "stop")
        except PostgresControlError:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        # Output to a file, not a pipe: the server pg_ctl starts inherits it and would hold a
        # pipe open for as long as it runs.
        with tempfile.TemporaryFile() as output:
            done = subprocess.run(
                [str(Path(POSTGRES_BIN_PATH) / "pg_ctl"), "-D", str(self.pgdata), *args],
                stdout=output,
                stderr=output,
                timeout=PG_CTL_TIMEOUT_S,
                user=self._system_user,
                check=False,
            )
            if done.returncode != 0:
                output.seek(0)
                said = output.read().decode(errors="replace").strip()
                raise PostgresControlError(f"pg_ctl {' '.join(args)}: {said}")

    def terminate_connections(self) -> int:
        """pg_terminate_backend on every client connection to the `td` database."""
        return asyncio.run(self._terminate_connections())

    async def _terminate_connections(self) -> int:
        conn = await asyncpg.connect(self.admin_url)
        try:
            terminated: int = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                " FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                DATABASE,
            )
        finally:
            await conn.close()
        return terminated
