"""The data directory holds the buffer, agent tokens' hashes and sealed device credentials:
only the gateway's own user may read it (0700, files 0600), fixed on every start for
directories made by older versions or by hand.

SQLite gives a database's -wal, -shm and -journal files the mode of the database file, so
creating each database file 0600 before SQLite opens it covers them too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

import structlog

log = structlog.get_logger("gateway.datadir")

DIR_MODE = 0o700
FILE_MODE = 0o600


def secure(data_dir: Path, databases: Iterable[str]) -> None:
    """Create `data_dir` (0700) and the named database files (0600) if missing, and take
    group and other access away from everything already in it."""
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _restrict(data_dir, DIR_MODE)
    for name in databases:
        fd = os.open(data_dir / name, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        os.close(fd)
    for entry in data_dir.iterdir():
        mode = entry.lstat().st_mode
        if stat.S_ISREG(mode):
            _restrict(entry, FILE_MODE)
        elif stat.S_ISDIR(mode):
            _restrict(entry, DIR_MODE)


def _restrict(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.lstat().st_mode)
    if not current & 0o077:
        return
    try:
        os.chmod(path, mode)
    except PermissionError:
        # Someone else's file (e.g. a volume mounted root-owned): say so, do not stop.
        log.warning("data_dir_not_private", path=str(path), mode=oct(current),
                    detail=f"owned by another user; run chmod {mode:o} on it")  # fmt: skip


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, readable by this user only."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(temporary, FILE_MODE)  # an older, wider file may have been reused
    os.replace(temporary, path)
