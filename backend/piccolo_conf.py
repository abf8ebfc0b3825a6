"""Piccolo's configuration module (`PICCOLO_CONF=backend.piccolo_conf`).

The backend learns its database URL at run time (possibly from the embedded server it just
started) and installs the engine with `backend.db.bind_engine`, which sets `DB` here. For the
Piccolo CLI, `DB` is built on first use from `TD_DATABASE_URL`.
"""

from __future__ import annotations

import os
from typing import Any

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

APP_REGISTRY = AppRegistry(apps=["backend.piccolo_app"])


def __getattr__(name: str) -> Any:
    # Only reached while `DB` is unset: building an engine connects to check the server
    # version, so it is not done at import.
    if name == "DB" and os.environ.get("TD_DATABASE_URL"):
        engine = PostgresEngine(config={"dsn": os.environ["TD_DATABASE_URL"]})
        globals()["DB"] = engine
        return engine
    raise AttributeError(name)
