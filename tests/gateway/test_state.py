from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import apsw
import pytest
import trio
import trio.testing

from gateway.errors import AgentRevoked, IdentityTaken, StorageError
from gateway.sealing import SecretBox
from gateway.state import State
from protocol.agent import RegisterRequest
from protocol.control import AgentAccess


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
async def test_stopping_while_a_commit_runs_waits_for_it(tmp_path: Path) -> None:
    # Shutdown cancels everything at once: the state must not close its connection under
    # a commit another task is running in a thread (that failed the whole gateway).
    entered, release = threading.Event(), threading.Event()

    def slow_commit() -> bool:
        entered.set()
        release.wait(10)
        return False

    tokens: dict[str, str] = {}
    state = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(state.run)
        assert state._conn is not None
        state._conn.set_commit_hook(slow_commit)

        async def register() -> None:
            _, tokens["pc-1"] = await state.register(
                RegisterRequest(agent_uid="pc-1", hostname="pc")
            )

        nursery.start_soon(register)
        await trio.to_thread.run_sync(entered.wait)
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await trio.testing.wait_all_tasks_blocked()  # the state's shutdown has begun
            release.set()

    reopened = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(reopened.run)
        agent = reopened.authenticate(tokens["pc-1"])
        assert agent is not None and agent.agent_uid == "pc-1"
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


def _access(uid: str, agent_id: str, action: str, second: int) -> AgentAccess:
    return AgentAccess(
        agent_uid=uid,
        agent_id=agent_id,
        action=action,  # type: ignore[arg-type]
        changed_at=dt.datetime(2026, 12, 1, 0, 0, second, tzinfo=dt.UTC),
    )


@pytest.mark.trio
async def test_an_agent_uid_belongs_to_its_agent_until_an_operator_decides(
    tmp_path: Path,
) -> None:
    request = RegisterRequest(agent_uid="pc", hostname="pc")
    state = State(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(state.run)
        agent, token = await state.register(request)
        with pytest.raises(IdentityTaken):
            await state.register(request)
        with pytest.raises(IdentityTaken):
            await state.register(request, token + "x")
        again, token = await state.register(request, token)
        assert again.agent_id == agent.agent_id

        assert await state.apply_access(_access("pc", agent.agent_id, "revoke", 1))
        assert state.authenticate(token) is None
        with pytest.raises(AgentRevoked):
            await state.register(request, token)
        # The same decision again (a reconnect) or an older one changes nothing.
        assert not await state.apply_access(_access("pc", agent.agent_id, "revoke", 1))
        assert not await state.apply_access(_access("pc", agent.agent_id, "reset", 0))
        nursery.cancel_scope.cancel()

    reopened = State(tmp_path)  # decisions survive a restart
    async with trio.open_nursery() as nursery:
        await nursery.start(reopened.run)
        with pytest.raises(AgentRevoked):
            await reopened.register(request)
        assert await reopened.apply_access(_access("pc", agent.agent_id, "reset", 2))
        after_reset, token = await reopened.register(request)
        assert after_reset.agent_id == agent.agent_id
        assert reopened.authenticate(token) is not None
        with pytest.raises(IdentityTaken):  # a reset allows one registration
            await reopened.register(request)
        # A deletion of another registration of the uid is not this one's.
        assert not await reopened.apply_access(_access("pc", "someone-else", "delete", 3))
        assert reopened.authenticate(token) is not None
        assert await reopened.apply_access(_access("pc", agent.agent_id, "delete", 4))
        assert reopened.authenticate(token) is None
        fresh, _ = await reopened.register(request)
        assert fresh.agent_id != agent.agent_id
        nursery.cancel_scope.cancel()


def _every_file(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())


@pytest.mark.trio
async def test_a_secret_setting_is_sealed_on_disk(tmp_path: Path) -> None:
    state = State(tmp_path, SecretBox("api-key"))
    async with trio.open_nursery() as nursery:
        await nursery.start(state.run)
        await state.set_setting("enrollment_key", "enrol-9f3e")
        nursery.cancel_scope.cancel()
    assert b"enrol-9f3e" not in _every_file(tmp_path)

    reopened = State(tmp_path, SecretBox("api-key"))
    async with trio.open_nursery() as nursery:
        await nursery.start(reopened.run)
        assert reopened.setting("enrollment_key") == "enrol-9f3e"
        nursery.cancel_scope.cancel()
