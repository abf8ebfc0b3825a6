"""Typed reads over APSW, whose rows are unions of every SQLite value type."""

from __future__ import annotations

from typing import Any, cast

import apsw


def query(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """All rows of `sql`; the columns' types are the caller's to know from the schema."""
    return cast(list[tuple[Any, ...]], conn.execute(sql, params).fetchall())
