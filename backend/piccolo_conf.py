"""Piccolo's configuration module (`PICCOLO_CONF=backend.piccolo_conf`).

`DB` starts unset: the backend learns its database URL at run time (possibly from the
embedded server it just started) and binds the engine with `backend.db.bind_engine`, which
replaces `DB` here. The Piccolo CLI gets an engine from `TD_DATABASE_URL`.
"""

from __future__ import annotations

import os

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

APP_REGISTRY = AppRegistry(apps=["backend.piccolo_app"])

DB: PostgresEngine | None = (
    PostgresEngine(config={"dsn": os.environ["TD_DATABASE_URL"]})
    if os.environ.get("TD_DATABASE_URL")
    else None
)
