"""The data lifecycle: archive before delete, retention per organisation and kind, privacy.

    store.py      the archive on any fsspec filesystem: Parquet file + manifest per org-month
    archive.py    expiring rows to the archive, verified, then deleted; restore; rewrite
    retention.py  retention per organisation and kind; the maintenance pass applying it
    routes.py     GET/PUT /v2/organization/retention; an employee's export and erasure
    privacy.py    everything held about one employee: the zip export, the erasure
    metrics.py    td_archive_* and td_retention_* series
    cli.py        td-backend archive list|restore ORG MONTH, td-backend maintenance

docs/lifecycle.md describes the guarantees and the defaults.
"""
