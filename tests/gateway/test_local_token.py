"""The local API token: shown once, kept only as a hash in a private file, and a new token
or a revocation holds for the very next check of a running gateway."""

from __future__ import annotations

import stat
from pathlib import Path

from gateway import local_token
from gateway.local_token import LocalToken


def test_mint_verify_rotate_and_revoke(tmp_path: Path) -> None:
    check = LocalToken(tmp_path)
    assert not check.configured()
    assert not check.verify("")

    first = local_token.mint(tmp_path)
    stored = tmp_path / local_token.TOKEN_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert first not in stored.read_text()
    assert check.verify(first)
    assert not check.verify(first + "x")
    assert not check.verify(first[:-1])

    second = local_token.mint(tmp_path)
    assert second != first
    assert check.verify(second)
    assert not check.verify(first)

    assert local_token.revoke(tmp_path)
    assert not check.verify(second)
    assert not local_token.revoke(tmp_path)
    assert not check.verify("x" * 10_000)
