"""One way the gateway serves an ASGI app on hypercorn's trio worker: its agent API, the
ZKTeco `/iclock/` endpoints and the local operator API each listen the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio


class FirstBind:
    """Turns hypercorn's `started(["http://host:port", ...])` into `started("host:port")`."""

    def __init__(self, task_status: trio.TaskStatus[str]) -> None:
        self._task_status = task_status

    def started(self, value: list[str] | None = None) -> None:
        first = (value or ["?://?"])[0]
        self._task_status.started(first.split("://", 1)[1])


def quiet_config(listen: str, *, graceful_timeout_s: float, backlog: int | None = None) -> Any:
    """A hypercorn config bound to `listen` without access logs: our own "listening" line
    says where we are; hypercorn speaks up only about problems."""
    config = hypercorn.config.Config()
    config.bind = [listen]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = graceful_timeout_s
    if backlog is not None:
        config.backlog = backlog
    return config


async def serve(
    app: Any,
    config: Any,
    shutdown: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[str],
) -> None:
    """Serve `app` until `shutdown` returns; `task_status` gets the bound host:port."""
    await hypercorn.trio.serve(
        app, config, shutdown_trigger=shutdown, task_status=FirstBind(task_status)
    )
