"""A full disk under the data directory: agents get 503 + Retry-After (never a 500), /health
says why, and logs are taken again once space returns.

The gateway runs in a mount namespace of its own (`unshare -m`) whose data directory is a
4 MiB tmpfs mounted there, so nothing is mounted on the host and the mount vanishes with the
process. The test reaches the files through /proc/<pid>/root, which resolves paths in the
gateway's namespace.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.gateway.e2e import poll, post_logs, register
from tests.gateway.helpers import varied_logs
from tests.gateway.process import GATEWAY

pytestmark = pytest.mark.slow
ENROLLMENT_KEY = "disk-full-enrollment"
TMPFS_SIZE = "4m"


@contextmanager
def gateway_on_small_tmpfs(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Yields the gateway's URL and its data directory as seen from this namespace."""
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    mount_then_run = (
        f'mount -t tmpfs -o size={TMPFS_SIZE} td-gateway-test "{data_dir}" && exec "$@"'
    )
    log = (tmp_path / "gw.log").open("ab")
    process = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            mount_then_run,
            "sh",
            GATEWAY,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--backend-url",
            "",
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, "TD_ENROLLMENT_KEY": ENROLLMENT_KEY},
    )
    log.close()
    # `unshare` and `sh` exec the gateway: the pid stays the same process throughout.
    seen = Path(f"/proc/{process.pid}/root") / data_dir.relative_to("/")
    try:
        deadline = time.monotonic() + 30
        while not (seen / "gateway.addr").exists():
            if process.poll() is not None:
                raise AssertionError(
                    f"the gateway exited ({process.returncode}):\n"
                    + (tmp_path / "gw.log").read_text(errors="replace")
                )
            if time.monotonic() > deadline:
                raise AssertionError("the gateway did not start listening in time")
            time.sleep(0.05)
        yield "http://" + (seen / "gateway.addr").read_text().strip(), seen
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fill(path: Path) -> None:
    """Write `path` until the file system has no space left (down to the last 512 bytes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (64 * 1024, 4096, 512):
            chunk = os.urandom(size)
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_a_full_disk_answers_503_with_retry_after_and_recovers(tmp_path: Path) -> None:
    with (
        gateway_on_small_tmpfs(tmp_path) as (url, data_dir),
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        token = register(client, ENROLLMENT_KEY)
        accepted = 0
        assert post_logs(client, token, varied_logs(100)).status_code == 202
        accepted += 100
        fill(data_dir / "filler")

        # Pages SQLite already holds may take a few more commits; then the disk is full.
        refused = None
        for _ in range(400):
            response = post_logs(client, token, varied_logs(100))
            assert response.status_code in (202, 503), response.text
            if response.status_code == 503:
                refused = response
                break
            accepted += 100
        assert refused is not None, "the full disk never refused a post"
        assert refused.json()["error"] == "storage_full"
        assert int(refused.headers["Retry-After"]) > 0
        figures = client.get("/health").json()
        assert figures["status"] == "degraded"
        assert "full" in figures["storage_error"]
        assert figures["fault"] == figures["storage_error"]
        assert figures["queue_depth"] == accepted  # what was acknowledged is all there
        assert "td_gateway_storage_failing 1.0" in client.get("/metrics").text

        (data_dir / "filler").unlink()  # space returns
        poll(
            lambda: post_logs(client, token, varied_logs(100)).status_code == 202,
            what="a post accepted once space returned",
        )
        figures = client.get("/health").json()
        assert figures["status"] == "ok", figures
        assert figures["storage_error"] is None
        assert figures["queue_depth"] > accepted
        assert "td_gateway_storage_failing 0.0" in client.get("/metrics").text
