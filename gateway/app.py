"""The gateway as one Trio program: one nursery, each part started with `nursery.start` so
nothing serves before what it needs is ready (state, buffer, uplink, devices, the control
channel, then HTTP).

Shutdown: `request_stop()` (SIGTERM/SIGINT in the CLI, the `restart` command) stops the
HTTP listener, lets in-flight requests finish their commits for a moment, then cancels the
rest. An upload cut short stays buffered under its batch id and is resent after restart.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path

import apsw
import structlog
import trio

from gateway import datadir, local_api, serving
from gateway.api import AgentApi
from gateway.buffer import BUFFER_FILE, Buffer
from gateway.client_identity import ClientIdentity
from gateway.config import GatewayConfig
from gateway.control import ControlChannel
from gateway.devices import zkteco, zkteco_server
from gateway.devices.base import create_adapter
from gateway.devices.manager import DeviceManager
from gateway.health import Health
from gateway.health import build as build_health
from gateway.local_api import LocalApi
from gateway.local_commands import LocalCommands
from gateway.local_token import LocalToken
from gateway.metrics import LiveFigures, Metrics
from gateway.sealing import SecretBox
from gateway.state import STATE_FILE, State
from gateway.uplink import Uplink
from protocol import storable
from protocol.agent import Log
from protocol.codec import ProtocolError

log = structlog.get_logger("gateway")

EXIT_OK = 0
# The `restart` command ends the process with this code so the container restarts it.
EXIT_RESTART = 75
ADDRESS_FILE = "gateway.addr"
ZK_ADDRESS_FILE = "zkteco.addr"
LOCAL_ADDRESS_FILE = "local.addr"
DEVICES_FILE = "devices.db"
# In-flight requests get this long to finish after the listener closes; all stays < 5 s.
HTTP_GRACE_S = 2.0
SHUTDOWN_DEADLINE_S = 4.0


class Gateway:
    """Run with `address = await nursery.start(gateway.run)`; stop with `request_stop()`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        data = config.data_path
        datadir.secure(data, (STATE_FILE, DEVICES_FILE, BUFFER_FILE))
        box = SecretBox(config.api_key)
        self.metrics = Metrics()
        self.state = State(data, box)
        self.buffer = Buffer(
            data,
            max_bytes=config.buffer_max_bytes,
            overflow=config.buffer_overflow,
            durability=config.durability,
            dead_letter_max_bytes=config.dead_letter_max_bytes,
        )
        self.identity = ClientIdentity(config, on_expiry=self.metrics.certificate_expiry.set)
        self.uplink = Uplink(
            config,
            self.buffer,
            self.metrics,
            gateway_id=self.gateway_id,
            agent_id_of=self.state.agent_id_of,
            identity=self.identity,
        )
        self._devices_db = apsw.Connection(str(data / DEVICES_FILE))
        self.zk_hub = zkteco.ZkPushHub(self.append) if config.zk_listen else None
        self.devices = DeviceManager(
            self._devices_db,
            poll_interval_s=config.device_poll_s,
            box=box,
            adapter_factory=zkteco.adapter_factory(self.zk_hub, create_adapter),
        )
        self.control = ControlChannel(
            config,
            self.state,
            self.buffer,
            self.uplink,
            self.devices,
            restart=lambda: self.request_stop(EXIT_RESTART),
            identity=self.identity,
        )
        self.local_commands = LocalCommands(
            self.state, self.devices, self.control.send, lambda: self.control.connected
        )
        self.control.local_commands = self.local_commands
        self.api = AgentApi(config, self.buffer, self.state, self.metrics, self.health)
        self.metrics.watch(self._live_figures)
        self.exit_code = EXIT_OK
        self._stop = trio.Event()

    # ---- the interface other parts (devices, control) use ----------------------------------

    async def append(self, agent_uid: str, logs: list[Log]) -> None:
        """Buffer logs that did not come over HTTP (device events use `device:<id>`);
        returns once committed. A log the backend could not store (a terminal with a broken
        clock) is logged and left out here rather than dead-lettered upstream."""
        now = dt.datetime.now(dt.UTC)
        storable_logs: list[Log] = []
        for entry in logs:
            try:
                storable.make_storable([entry], "$", now, storable.AGENT_WINDOW)
            except ProtocolError as exc:
                log.warning(
                    "log_not_storable", agent_uid=agent_uid, id=str(entry.id), error=str(exc)
                )
                continue
            storable_logs.append(entry)
        if storable_logs:
            await self.buffer.append(agent_uid, storable_logs)

    def gateway_id(self) -> str:
        return self.state.setting("gateway_id") or ""

    def request_stop(self, exit_code: int = EXIT_OK) -> None:
        self.exit_code = exit_code
        self._stop.set()

    def backend_connected(self) -> bool:
        # The control channel knows at once (it pings every heartbeat); without it, the
        # last upload attempt is the only evidence.
        if self.control.enabled:
            return self.control.connected
        return self.uplink.health.backend_connected

    def health(self) -> Health:
        uplink = self.uplink.health
        return build_health(
            self.buffer.stats,
            corrupt_files=self.buffer.corrupt_files,
            storage_problem=self.buffer.storage_problem,
            last_upload_at=uplink.last_upload_at,
            backend_connected=self.backend_connected(),
            connected_agents=self.state.connected_agents(),
            error_streak=uplink.error_streak,
            control_connected=self.control.connected,
        )

    def _live_figures(self) -> LiveFigures:
        return LiveFigures(
            buffer=self.buffer.stats,
            connected_agents=self.state.connected_agents(),
            backend_connected=self.backend_connected(),
            storage_problem=self.buffer.storage_problem,
        )

    # ---- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> int:
        """Serve until `request_stop()`; reports the bound `host:port` once listening."""
        http_stopped = trio.Event()
        data = self.config.data_path
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.state.run)
                await nursery.start(self.buffer.run)
                # Enrolled (or tried once) before the first upload, so it goes signed.
                await nursery.start(self.identity.run)
                await nursery.start(self.uplink.run)
                await nursery.start(
                    partial(
                        self.devices.run, append_logs=self.append, report_state=self.control.send
                    )
                )
                await nursery.start(self.local_commands.run)
                await nursery.start(self.control.run)
                if self.zk_hub is not None:
                    zk_address = await nursery.start(
                        zkteco_server.serve,
                        self.zk_hub,
                        self.config.zk_listen,
                        self.control.send,
                        self._stop.wait,
                    )
                    _write_address(self.config.data_path, zk_address, ZK_ADDRESS_FILE)
                    log.info("zkteco_listening", address=zk_address)
                if self.config.local_listen:
                    local_address = await nursery.start(
                        local_api.serve,
                        LocalApi(LocalToken(data), self.devices, self.local_commands),
                        self.config.local_listen,
                        self._stop.wait,
                    )
                    _write_address(data, local_address, LOCAL_ADDRESS_FILE)
                    log.info("local_api_listening", address=local_address)
                address = await nursery.start(self._serve_agents, http_stopped)
                _write_address(self.config.data_path, address, ADDRESS_FILE)
                log.info(
                    "listening",
                    address=address,
                    tls=bool(self.config.tls_cert),
                    data_dir=str(self.config.data_path),
                    uploads_to=self.config.backend_url or None,
                )
                task_status.started(address)
                await self._stop.wait()
                with trio.move_on_after(SHUTDOWN_DEADLINE_S):
                    await http_stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._devices_db.close()
        log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _serve_agents(
        self, stopped: trio.Event, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Thousands of agents reconnect at once after a restart or an outage; hypercorn's
        # default backlog (100) turns that burst into refused connections.
        config = serving.quiet_config(
            self.config.listen, graceful_timeout_s=HTTP_GRACE_S, backlog=4096
        )
        if self.config.tls_cert:
            config.certfile = self.config.tls_cert
            config.keyfile = self.config.tls_key

        try:
            await serving.serve(self.api, config, self._stop.wait, task_status)
        finally:
            stopped.set()


def _write_address(data_dir: Path, address: str, name: str) -> None:
    # Written atomically: tools polling for the file never read half an address.
    datadir.write_private(data_dir / name, address + "\n")
