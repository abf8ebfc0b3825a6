"""`td-backend` on its embedded PostgreSQL: create-org, dburl, serve and a clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.support.backend import TD_BACKEND, BackendProcess


@pytest.mark.slow
def test_embedded_database_from_create_org_to_serve(tmp_path: Path) -> None:
    # A data dir whose socket path would pass the ~100 byte Unix socket limit.
    data_dir = tmp_path / ("long-directory-name-" * 5) / "td"
    backend = BackendProcess(data_dir, None)
    try:
        created = json.loads(backend.run_cli("create-org", "acme"))
        assert created["admin_token"].startswith("tda_")
        url = backend.run_cli("dburl").strip()
        assert url.startswith("postgresql://")

        async def org_names() -> list[str]:
            conn = await asyncpg.connect(url)
            try:
                return [r["name"] for r in await conn.fetch("SELECT name FROM organizations")]
            finally:
                await conn.close()

        assert asyncio.run(org_names()) == ["acme"]

        backend.start()
        with backend.admin() as admin:
            assert admin.get("/v2/gateways").status_code == 200
        assert backend.stop() == 0
        # The serve that ended was the last user of the embedded server: it stopped it.
        assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    finally:
        backend.kill()
        # `dburl` leaves the server running on purpose; a `serve` that ends stops it, and
        # this makes sure nothing outlives the test either way.
        subprocess.run(
            [str(Path(TD_BACKEND).parent / "python"), "-c", _STOP, str(data_dir / "pgdata")],
            check=False,
            timeout=60,
        )


_STOP = """
import sys, warnings
warnings.simplefilter("ignore")
from pgserver.postgres_server import get_server
get_server(sys.argv[1], cleanup_mode="stop").cleanup()
"""


def _td_backend(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TD_BACKEND, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_unreachable_database_is_one_clear_line_without_the_password(tmp_path: Path) -> None:
    env = {**os.environ, "TD_DATABASE_URL": "postgresql://td:hunter2@127.0.0.1:1/td"}
    done = _td_backend("migrate", "--data-dir", str(tmp_path), env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("td-backend: cannot use the database")
    assert "hunter2" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_busy_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "TD_DATABASE_URL"}
        done = _td_backend(
            "serve", "--port", str(port), "--data-dir", str(tmp_path / "td"), env=env
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "td" / "pgdata").exists()
