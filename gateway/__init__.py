"""The on-site gateway: agents post logs over HTTP, the gateway keeps them durably and
uploads them to the backend, holds the control channel and drives the devices.

    config.py         GatewayConfig: TD_* env, --flags, optional TOML; one-line errors
    app.py            Gateway: one nursery, each part started with nursery.start
    api.py, http_io   the agent HTTP API (a plain ASGI app on hypercorn's trio worker)
    openapi.py        the agent API's OpenAPI document, served at /schema
    buffer.py         group-commit writer over buffer_store.py (APSW ring buffer)
    state.py          agents (hashed tokens, operators' revoke/reset/delete), policies,
                      settings (secrets sealed), command records
    sealing.py        SecretBox: secrets at rest sealed with a key derived from the API key
    datadir.py        the data dir 0700 and its files 0600
    uplink.py         batches to POST /v2/ingest/logs: zstd, Idempotency-Key, backoff;
                      a refused batch is split (upload_body.py) down to the refused logs
    dead_letters.py   `td-gateway dead-letters`: list, show, replay, drop refused logs
    control.py        the WebSocket control channel; commands.py runs its commands
    client_identity.py  the client certificate: key, enrollment, renewal, batch signatures
    health.py         /health and the status reports; metrics.py Prometheus td_gateway_*
    cli.py            `td-gateway run`, `dead-letters`, `discover`, `local-token`
    local_api.py      the operators' local API on TD_LOCAL_LISTEN (doors without the cloud);
                      local_token.py its token, local_commands.py its commands and their
                      reports upstream
    discovery.py      loopback probes for terminals (CLI and the `discover` command);
                      sadp.py the Hikvision SADP inquiry, multicast on loopback only
    devices/          terminals (Hikvision ISAPI, ZKTeco PUSH, BioStar 2) and the manager

For other parts of the gateway: `Gateway.append(agent_uid, logs)` stores logs durably
(device events use agent_uid `device:<device_id>`), and commands.DeviceHub is what the
control channel expects from the device side.
"""
