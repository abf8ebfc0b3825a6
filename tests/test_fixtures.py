from __future__ import annotations

import asyncpg
import pytest


@pytest.mark.anyio
async def test_each_test_gets_an_empty_database(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE t (x int)")
    finally:
        await conn.close()
