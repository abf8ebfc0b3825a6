"""Background work every instance runs: command expiry, marking silent gateways OFFLINE, and
closing sockets whose key was revoked (a backstop for a lost notice)."""

from __future__ import annotations

import asyncio
import datetime as dt

from backend.control import state
from backend.control.hub import ControlHub
from backend.logging import get_logger

log = get_logger("backend.control")


async def expire_once(hub: ControlHub) -> int:
    async with hub.services.pool.acquire() as conn:
        expired = await state.expire_commands(conn)
    for command_id, gateway_id, was_sent in expired:
        if was_sent:
            # The gateway may still hold it; tell it not to run it any more.
            await hub.command_canceled(gateway_id, command_id)
        await hub.command_finished(command_id)
    if expired:
        log.info("commands timed out", count=len(expired))
    return len(expired)


async def mark_offline_once(hub: ControlHub) -> int:
    config = hub.services.config
    async with hub.services.pool.acquire() as conn:
        return await state.mark_stale_offline(
            conn,
            dt.timedelta(seconds=config.gateway_offline_after_s),
            dt.timedelta(seconds=config.agent_offline_after),
        )


async def sweep_forever(hub: ControlHub) -> None:
    config = hub.services.config
    loop = asyncio.get_running_loop()
    next_offline_check = loop.time()
    while True:
        try:
            await expire_once(hub)
            await hub.close_revoked()
            if loop.time() >= next_offline_check:
                await mark_offline_once(hub)
                next_offline_check = loop.time() + config.heartbeat_interval
        except Exception:
            # Transient database trouble: the next round retries.
            log.exception("control sweep failed")
        await asyncio.sleep(config.expiry_check_interval)
