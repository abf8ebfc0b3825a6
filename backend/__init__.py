"""The TD backend: Litestar on PostgreSQL, served by granian (`td-backend serve`).

    config.py       every TD_* setting (one frozen struct)
    cli.py          td-backend serve | migrate | create-org NAME | dburl | maintenance | archive
    embedded.py     pgserver under <data-dir>/pgdata when TD_DATABASE_URL is unset
    app.py          the app factory; one error mapping; lifespan of pool and tasks
    db.py           Piccolo engine + asyncpg pool, migrations (piccolo_migrations/)
    tables.py       Piccolo tables
    auth.py         admin tokens and gateway keys (sha256 + lookup prefix)
    ingest.py       exactly-once ingest: COPY into a staging table, INSERT … ON CONFLICT
    partitions.py   monthly partitions of agent_logs
    maintenance.py  partitions ahead, retention (backend.lifecycle), snapshots, batch ids
    metrics.py      Prometheus counters and the request latency histogram
    fleet_metrics.py  td_fleet_gateway_* figures from the gateways' last reports
    routes/         HTTP routes by feature
    control/        the gateways' WebSocket control channel, LISTEN/NOTIFY between instances
    pki/            gateways' client certificates (the backend's CA, enrollment, renewal,
                    revocation), signed batches, TLS serving (docs/gateway-mtls.md)
    attendance/     people and attendance: capture at ingest, the day rules, the engine,
                    reports (docs/attendance.md)
    dashboard/      the operator's screen at /dashboard (server-rendered, htmx)
    accounts/       users, roles and the one role -> permission table, personal tokens,
                    argon2id passwords, the acting identity (docs/accounts.md)
    audit/          the append-only audit trail's one writer
    oidc/           dashboard sign-in through the organisation's OpenID Connect provider
                    (docs/accounts.md)
    lifecycle/      archive before delete, retention per organisation and kind, privacy
                    requests (docs/lifecycle.md)

Several instances may share one database; they must also share TD_SECRET_KEY (device
passwords and enrollment keys are encrypted with it).
"""
