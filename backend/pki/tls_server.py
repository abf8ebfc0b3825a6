"""The direct topology: `td-backend serve` terminates TLS itself and asks for a client
certificate (optional at the TLS layer: admins, the dashboard and API-key gateways have none).

Granian can verify client certificates (ssl_ca, ssl_client_verify) but does not hand the
peer certificate to the application, so the app could not tell which gateway presented one,
nor refuse a revoked one; a CRL file read at start is no immediate revocation. This topology
therefore runs on hypercorn's asyncio worker, one process, with one addition: each
connection's verified peer certificate is put in `peer.PEER_CERTIFICATE` before hypercorn
serves it (the app's tasks inherit it). Without TLS settings, or behind nginx, granian
serves as before.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio import serve
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config as HypercornConfig

from backend.pki.peer import PEER_CERTIFICATE


class _PeerCertificateTCPServer(TCPServer):
    async def run(self) -> None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        PEER_CERTIFICATE.set(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        await super().run()


def serve_tls(host: str, port: int, cert_file: str, key_file: str, client_ca: Path) -> None:
    """Serve backend.app over TLS with optional client certificates until SIGTERM/SIGINT."""
    from backend.app import create_app_from_env

    # hypercorn builds a TCPServer per connection from this module's name.
    hypercorn_run.TCPServer = _PeerCertificateTCPServer  # type: ignore[attr-defined]
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.certfile = cert_file
    config.keyfile = key_file
    config.ca_certs = str(client_ca)
    config.verify_mode = ssl.CERT_OPTIONAL
    config.accesslog = None
    config.errorlog = "-"
    config.graceful_timeout = 15.0
    config.websocket_ping_interval = None
    asyncio.run(serve(create_app_from_env(), config))  # type: ignore[arg-type]
