"""Gateways' client certificates and signed batches.

    authority.py    the backend's own CA: created once in the database (key encrypted with
                    TD_SECRET_KEY), issues short-lived client certificates from CSRs
    peer.py         the client certificate of a request: from this server's TLS handshake
                    (direct topology) or from the proxy's header (trusted proxies only)
    identify.py     who a gateway request is: certificate first, API key as the fallback an
                    organisation can switch off; revocation and supersession
    signatures.py   the signature over each upload batch (protocol.batch_signature)
    tls_server.py   `td-backend serve` with TLS and client certificates (hypercorn)

docs/gateway-mtls.md describes both topologies.
"""
