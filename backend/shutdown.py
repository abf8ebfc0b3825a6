"""Close the gateways' WebSockets as soon as the server is told to stop.

Granian stops a worker gracefully: it waits for open connections to end before running the
lifespan shutdown. Control WebSockets never end on their own, so the hub must close them
when the stop signal arrives, not at lifespan shutdown. Granian handles SIGTERM/SIGINT with
asyncio loop signal handlers installed before the lifespan starts; ours runs first, then
hands over to granian's.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from backend.logging import get_logger

log = get_logger("backend.shutdown")


def on_stop_signal(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run `callback` on SIGTERM/SIGINT before the server's own handler (if it has one)."""
    handlers: dict[int, Any] = getattr(loop, "_signal_handlers", {})
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = handlers.get(sig)
        if previous is None:
            # No loop handler to chain (another server, or a test client): leave the
            # server's own signal handling alone; sessions close at lifespan shutdown.
            continue

        def chained(previous: Any = previous) -> None:
            callback()
            previous._run()

        try:
            loop.add_signal_handler(sig, chained)
        except (RuntimeError, ValueError) as exc:
            log.warning("cannot watch stop signals", error=str(exc))
