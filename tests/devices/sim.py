"""A simulated terminal on port 0 inside the test's own trio run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from devsim.hikvision.server import serve_simulator
from devsim.hikvision.terminal import SimulatedTerminal, SimulatorConfig
from gateway.devices.hikvision import HikvisionAdapter
from protocol.control import DeviceConfig

PASSWORD = "Sup3r-Secret-PW"


class Running:
    def __init__(self, terminal: SimulatedTerminal, port: int) -> None:
        self.terminal = terminal
        self.port = port

    def config(self, password: str = PASSWORD, device_id: str = "dev-1") -> DeviceConfig:
        return DeviceConfig(
            device_id=device_id,
            vendor="hikvision",
            name="Front door",
            host="127.0.0.1",
            port=self.port,
            username="admin",
            password=password,
        )

    def adapter(self, password: str = PASSWORD, timeout_s: float = 5.0) -> HikvisionAdapter:
        return HikvisionAdapter(self.config(password), timeout_s=timeout_s)


@asynccontextmanager
async def simulator(**knobs: Any) -> AsyncIterator[Running]:
    knobs.setdefault("reboot_s", 30.0)
    config = SimulatorConfig(port=0, password=PASSWORD, **knobs)
    terminal = SimulatedTerminal(config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_simulator, config, terminal=terminal))
        yield Running(terminal, port)
        nursery.cancel_scope.cancel()
