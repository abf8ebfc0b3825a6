from __future__ import annotations

from pathlib import Path

import apsw
import pytest
import trio

from gateway.errors import StorageError
from gateway.state import State
from protocol.agent import RegisterRequest


@pytest.mark.trio
async def test_concurrent_registrations_share_commits_and_all_persist(tmp_path: Path) -> None:
    commits = 0

    def count_commit() -> bool:
        nonlocal commits
        commits += 1
        return False  # False: let the commit happen

    tokens: dict[str, str] = {}
    state = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(state.run)
        assert state._conn is not None
        state._conn.set_commit_hook(count_commit)

        async def register(uid: str) -> None:
            _, token = await state.register(RegisterRequest(agent_uid=uid, hostname="pc"))
            tokens[uid] = token

        async with trio.open_nursery() as burst:
            for n in range(200):
                burst.start_soon(register, f"agent-{n}")
        nursery.cancel_scope.cancel()

    assert len(tokens) == 200
    # A burst waits for the commit under way, then goes in together: far fewer fsyncs.
    assert commits < 100

    reopened = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(reopened.run)
        for uid, token in tokens.items():
            agent = reopened.authenticate(token)
            assert agent is not None and agent.agent_uid == uid
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_failing_write_does_not_undo_the_others_in_its_commit(tmp_path: Path) -> None:
    state = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(state.run)
        outcomes: dict[str, object] = {}

        def bad(conn: apsw.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        async def write_bad() -> None:
            try:
                await state._write(bad)
            except StorageError as exc:
                outcomes["bad"] = exc

        async def register(uid: str) -> None:
            outcomes[uid] = await state.register(RegisterRequest(agent_uid=uid, hostname="h"))

        async with trio.open_nursery() as both:
            both.start_soon(register, "a")
            both.start_soon(write_bad)
            both.start_soon(register, "b")
        nursery.cancel_scope.cancel()

    assert isinstance(outcomes["bad"], StorageError)
    reopened = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(reopened.run)
        for uid in ("a", "b"):
            _, token = outcomes[uid]  # type: ignore[misc]
            agent = reopened.authenticate(token)
            assert agent is not None and agent.agent_uid == uid
        nursery.cancel_scope.cancel()
