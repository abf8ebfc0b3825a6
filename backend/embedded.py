"""The embedded PostgreSQL (pgserver) used when no `TD_DATABASE_URL` is set."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

DATABASE_NAME = "td"


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, *, stop_on_exit: bool = True) -> Iterator[str]:
    """Start (or reuse) PostgreSQL under `<data_dir>/pgdata` and yield a URL to its `td` database.

    pgserver counts handles per process and stops the server when the last one closes, so a
    second process using the same data dir (e.g. `td-backend dburl` next to `serve`) shares
    it. With `stop_on_exit=False` the server keeps running after this process exits.
    pgserver keeps the Unix socket in pgdata and moves it to a short runtime directory when
    that path would pass the ~100 byte socket path limit.
    """
    # Imported late: pgserver asks platformdirs for a runtime dir at import, which warns
    # on machines without an XDG session; it is only needed in embedded mode.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    # pgserver logs every step at INFO through the root logger; keep that out of our output.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    server = get_server(
        data_dir.resolve() / "pgdata", cleanup_mode="stop" if stop_on_exit else None
    )
    try:
        exists = server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';"
        ).strip()
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        yield str(server.get_uri(DATABASE_NAME))
    finally:
        if stop_on_exit:
            server.cleanup()
