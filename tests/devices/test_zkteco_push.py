"""The gateway's ZKTeco side on a real socket: the /iclock/ server, the hub and the adapter,
spoken to by hand-written terminal requests (the bytes a terminal sends)."""

from __future__ import annotations

import ast
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest
import trio
import trio.testing

from gateway import config
from gateway.devices.base import DeviceError, DeviceErrorKind, UserRecord
from gateway.devices.iclock import CommandReturn
from gateway.devices.manager import DeviceManager
from gateway.devices.zkteco import ZkPushHub, ZkTecoAdapter, adapter_factory
from gateway.devices.zkteco_server import serve
from gateway.errors import BufferFull, ConfigError
from protocol.agent import DeviceEvent, Log
from protocol.control import Command, DeviceConfig, DevicesSeen, GatewayMessage

SERIAL = "SN0001"
CONFIG = DeviceConfig(device_id="dev-1", vendor="zkteco", name="clock", serial=SERIAL)


class Upstream:
    """Stands in for the control channel and the buffer: the boundaries of this test."""

    def __init__(self) -> None:
        self.logs: list[tuple[str, list[Log]]] = []
        self.messages: list[GatewayMessage] = []
        self.full = False
        self.sent = trio.Event()

    async def append(self, agent_uid: str, logs: list[Log]) -> None:
        if self.full:
            raise BufferFull(retry_after_s=5)
        self.logs.append((agent_uid, logs))

    async def send(self, message: GatewayMessage) -> None:
        self.messages.append(message)
        self.sent.set()


@asynccontextmanager
async def running_server(hub: ZkPushHub, upstream: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve, hub, "127.0.0.1:0", upstream.send, stop.wait)
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            yield client
        stop.set()


async def declared_too_large(client: httpx.AsyncClient, target: str) -> int:
    """Status of a POST announcing a body past the cap (the server must not wait for it)."""
    url = client.base_url
    assert url.host and url.port
    stream = await trio.open_tcp_stream(url.host, url.port)
    async with stream:
        await stream.send_all(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {3 << 20}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n" not in answer:
            answer += await stream.receive_some(1024)
    return int(answer.split(b" ", 2)[1])


@pytest.mark.trio
async def test_unknown_serial_is_refused_and_reported_once() -> None:
    upstream = Upstream()
    hub = ZkPushHub(upstream.append)
    async with running_server(hub, upstream) as client:
        for _ in range(3):
            answer = await client.get("/iclock/cdata", params={"SN": "STRANGER1", "options": "all"})
            assert answer.status_code == 403
        with trio.fail_after(10):
            await upstream.sent.wait()
        assert all(isinstance(m, DevicesSeen) for m in upstream.messages)
        serials = [
            d.serial for m in upstream.messages if isinstance(m, DevicesSeen) for d in m.devices
        ]
        assert serials == ["STRANGER1"]
        assert (await client.get("/iclock/cdata", params={"SN": "a b"})).status_code == 400
        assert (await client.get("/other", params={"SN": SERIAL})).status_code == 404


@pytest.mark.trio
async def test_punches_are_acknowledged_after_the_append_and_refused_when_full() -> None:
    upstream = Upstream()
    hub = ZkPushHub(upstream.append)
    adapter = ZkTecoAdapter(CONFIG, hub)
    body = b"1001\t2026-11-30 08:59:12\t0\t4\t0\t0\t0\n1002\t2026-11-30 09:00:00\t1\t15\n"
    params = {"SN": SERIAL, "table": "ATTLOG", "Stamp": "0"}
    async with running_server(hub, upstream) as client:
        handshake = await client.get("/iclock/cdata", params={"SN": SERIAL, "options": "all"})
        assert handshake.text.startswith(f"GET OPTION FROM: {SERIAL}\n")
        assert "date" in handshake.headers  # the terminal sets its clock from it
        answer = await client.post("/iclock/cdata", params=params, content=body)
        assert (answer.status_code, answer.text) == (200, "OK: 2")
        ((agent_uid, logs),) = upstream.logs
        assert agent_uid == "device:dev-1"
        assert all(isinstance(e, DeviceEvent) for e in logs)
        assert [e.employee_no for e in logs if isinstance(e, DeviceEvent)] == ["1001", "1002"]
        upstream.full = True
        refused = await client.post("/iclock/cdata", params=params, content=body)
        assert refused.status_code == 503
        assert await declared_too_large(client, f"/iclock/cdata?SN={SERIAL}&table=ATTLOG") == 413
        assert len(upstream.logs) == 1
        info = await adapter.device_info()
        assert info.serial_number == SERIAL
    await adapter.aclose()


@pytest.mark.trio
async def test_a_command_is_handed_out_once_and_its_first_result_wins() -> None:
    upstream = Upstream()
    hub = ZkPushHub(upstream.append)
    adapter = ZkTecoAdapter(CONFIG, hub)
    poll = {"SN": SERIAL}
    async with running_server(hub, upstream) as client, trio.open_nursery() as nursery:
        results: list[dict[str, Any]] = []
        done = trio.Event()

        async def open_door() -> None:
            results.append(await adapter.door(1, "open"))
            done.set()

        nursery.start_soon(open_door)
        with trio.fail_after(10):
            while True:
                first = (await client.get("/iclock/getrequest", params=poll)).text
                if first != "OK":
                    break
        assert first.startswith("C:") and first.endswith(":AC_UNLOCK\n")
        assert (await client.get("/iclock/getrequest", params=poll)).text == "OK"
        command_id = first.split(":")[1]
        report = f"ID={command_id}&Return=0&CMD=AC_UNLOCK\n".encode()
        for _ in range(2):  # a terminal re-sending its result changes nothing
            answer = await client.post("/iclock/devicecmd", params=poll, content=report)
            assert answer.text == "OK"
        with trio.fail_after(10):
            await done.wait()
        assert results == [{"door": 1, "action": "open"}]


@pytest.mark.trio
async def test_a_command_given_up_before_a_poll_never_reaches_the_terminal() -> None:
    hub = ZkPushHub(Upstream().append)
    adapter = ZkTecoAdapter(CONFIG, hub)
    terminal = hub.terminal(SERIAL)
    assert terminal is not None
    with trio.move_on_after(0.05):
        await adapter.reboot()
    assert terminal.take_commands() == []


@pytest.mark.trio
async def test_terminal_errors_map_to_device_errors() -> None:
    hub = ZkPushHub(Upstream().append)
    adapter = ZkTecoAdapter(CONFIG, hub)
    terminal = hub.terminal(SERIAL)
    assert terminal is not None
    caught: list[DeviceError] = []

    async def delete() -> None:
        try:
            await adapter.delete_user("1001")
        except DeviceError as exc:
            caught.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(delete)
        await trio.testing.wait_all_tasks_blocked()
        ((command_id, text),) = terminal.take_commands()
        assert text == "DATA DELETE USERINFO PIN=1001"
        terminal.resolve(CommandReturn(command_id=command_id, code=-10))
    assert caught[0].kind is DeviceErrorKind.BAD_REQUEST
    assert "no such user" in str(caught[0])
    with pytest.raises(DeviceError) as bad:
        await adapter.add_user(UserRecord(employee_no="10 01"))
    assert bad.value.kind is DeviceErrorKind.BAD_REQUEST
    with pytest.raises(DeviceError) as unsupported:
        await adapter.door(1, "always_open")
    assert unsupported.value.kind is DeviceErrorKind.NOT_SUPPORTED


@pytest.mark.trio
async def test_without_a_listener_zkteco_devices_say_how_to_enable_it(tmp_path: Path) -> None:
    manager = DeviceManager(
        apsw.Connection(str(tmp_path / "devices.db")),
        adapter_factory=adapter_factory(None, lambda cfg: pytest.fail("not for zkteco")),
    )
    await manager.configure(CONFIG)
    result = await manager.run_command(
        Command(
            id=uuid.uuid4(),
            target="device",
            command_type="open_door",
            device_id="dev-1",
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30),
        )
    )
    assert result.status == "FAILED"
    assert "TD_ZK_LISTEN" in (result.error or "")


def test_devsim_simulators_import_nothing_from_the_gateway() -> None:
    devsim = Path(__file__).parents[2] / "devsim"
    paths = sorted(devsim.rglob("*.py"))
    assert devsim / "hikvision" / "terminal.py" in paths  # the walk reaches the subpackages
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "gateway" or n.startswith("gateway.") for n in names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                # importlib.import_module("gateway...") would hide the import from the walk
                assert node.func.attr != "import_module", path


def test_the_gateway_package_holds_no_simulator() -> None:
    gateway = Path(__file__).parents[2] / "gateway"
    assert sorted(p.name for p in gateway.rglob("simulat*")) == []
    for path in gateway.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "devsim" for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "devsim", path


def test_the_listener_is_off_unless_set_and_a_bad_address_is_named() -> None:
    assert config.load([], {}).zk_listen == ""
    assert config.load([], {"TD_ZK_LISTEN": "0.0.0.0:8081"}).zk_listen == "0.0.0.0:8081"
    assert config.load(["--zk-listen", "127.0.0.1:0"], {}).zk_listen == "127.0.0.1:0"
    with pytest.raises(ConfigError, match=r"TD_ZK_LISTEN \(--zk-listen\): got '8081'"):
        config.load([], {"TD_ZK_LISTEN": "8081"})
