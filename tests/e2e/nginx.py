"""A real nginx (Debian package) running the project's own reverse-proxy config."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "nginx" / "td.conf.template"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render_template(values: dict[str, str]) -> str:
    """What the nginx image's envsubst step does: fill in `${TD_*}` and nothing else."""
    return re.sub(r"\$\{(TD_[A-Z_]+)\}", lambda match: values[match.group(1)], TEMPLATE.read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_nginx(
    workdir: Path,
    upstreams: list[str],
    cert: Path,
    key: Path,
    *,
    client_ca: Path | None = None,
    bind: str | None = None,
) -> Iterator[str]:
    """nginx in the foreground on a free port in front of `upstreams`; yields its https URL.

    `client_ca`: the CA gateways' client certificates are verified against (without one,
    a CA nobody has signed with: none verifies). `bind`: the address nginx connects to the
    backends from (what their TD_TRUSTED_PROXIES names)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    if client_ca is None:
        client_ca = workdir / "no-client-ca.pem"
        client_ca.write_bytes(cert.read_bytes())
    site = render_template(
        {
            "TD_PROXY_LISTEN": f"127.0.0.1:{port}",
            "TD_BACKEND_UPSTREAMS": " ".join(f"server {u};" for u in upstreams),
            "TD_TLS_CERT": str(cert),
            "TD_TLS_KEY": str(key),
            "TD_CLIENT_CA": str(client_ca),
        }
    )
    temp_paths = " ".join(
        f"{kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would run as nobody and could not buffer bodies into workdir.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"{user}\ndaemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{\n access_log {workdir / 'access.log'};\n {temp_paths}\n"
        f" {f'proxy_bind {bind};' if bind else ''}\n{site}\n}}\n"
    )
    # Start-up errors go to stderr before error_log applies.
    with (workdir / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited: {(workdir / 'stderr.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise AssertionError("nginx did not start listening")
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish in-flight requests
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
