"""The client certificate a request came with, in either topology.

Direct: `td-backend serve --tls-cert ...` terminates TLS itself (tls_server.py) and puts the
verified peer certificate of the connection in `PEER_CERTIFICATE` for the app.

Behind nginx: nginx verifies the certificate and sends it on URL-encoded in
`X-Client-Certificate`, with its verdict in `X-Client-Verify` (it overwrites whatever a client
sent under those names). The headers count only on a connection from an address in
TD_TRUSTED_PROXIES; from anywhere else they are ignored, as a client could have written them.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from backend.errors import Unauthorized

CERTIFICATE_HEADER = "x-client-certificate"
VERIFY_HEADER = "x-client-verify"
MAX_CERTIFICATE_HEADER_BYTES = 16_384

# DER bytes of the verified peer certificate of the current connection (direct topology).
PEER_CERTIFICATE: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "td_peer_certificate", default=None
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Presented:
    certificate: x509.Certificate
    via_proxy: bool


@functools.lru_cache(maxsize=8)
def trusted_networks(setting: str) -> tuple[Network, ...]:
    """TD_TRUSTED_PROXIES: comma-separated addresses or CIDR networks."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in setting.split(",")
        if part.strip()
    )


def is_trusted_proxy(client_host: str | None, setting: str) -> bool:
    if not client_host or not setting:
        return False
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    return any(address in network for network in trusted_networks(setting))


def presented_certificate(
    headers: Mapping[str, str], client_host: str | None, trusted_proxies: str
) -> Presented | None:
    """The client certificate of this request, None without a verified one."""
    der = PEER_CERTIFICATE.get()
    if der is not None:
        return Presented(x509.load_der_x509_certificate(der), via_proxy=False)
    if not is_trusted_proxy(client_host, trusted_proxies):
        return None
    escaped = headers.get(CERTIFICATE_HEADER, "")
    if not escaped or headers.get(VERIFY_HEADER, "") != "SUCCESS":
        # None, or one the proxy could not verify (expired, another CA's): it proves
        # nothing, and the request is judged by its API key alone, as without one.
        return None
    if len(escaped) > MAX_CERTIFICATE_HEADER_BYTES:
        raise Unauthorized("the client certificate is too large")
    try:
        return Presented(
            x509.load_pem_x509_certificate(urllib.parse.unquote(escaped).encode()), via_proxy=True
        )
    except ValueError:
        raise Unauthorized("the proxy passed a client certificate that cannot be read") from None
