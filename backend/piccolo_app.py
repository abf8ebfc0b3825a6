"""The Piccolo app: its tables and migrations folder (`piccolo migrations forwards backend`)."""

from __future__ import annotations

from pathlib import Path

from piccolo.conf.apps import AppConfig

from backend.tables import ALL_TABLES

APP_CONFIG = AppConfig(
    app_name="backend",
    migrations_folder_path=Path(__file__).parent / "piccolo_migrations",
    table_classes=ALL_TABLES,
)
