"""`make run`: the whole stack on this machine, on the embedded PostgreSQL.

Starts the backend (127.0.0.1:8000), provisions an organisation, a gateway, a default
policy and a simulated Hikvision terminal through the API, starts the gateway
(127.0.0.1:8080) and the terminal simulator (127.0.0.1:18080) — other ports with
--backend-port, --gateway-port, --devsim-port —, prints what you need to use them, and
stops everything on Ctrl-C. The terminal plays a demo crowd badging in and out (employees
with cards, one owning the demo PC, a few late) on a shift anchored four hours before the
start, so today's attendance has something to show. What it provisioned is kept in `<data-dir>/stack.json`
(mode 0600), so the next `make run` reuses the same organisation and keys.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from devsim.hikvision.people import DEMO_PEOPLE, SHIFT_HOURS

BIN = Path(sys.executable).parent
START_DEADLINE_S = 90


def child_env(own: dict[str, str] | None = None) -> dict[str, str]:
    """The services share TD_* names (TD_DATA_DIR, TD_LOG_LEVEL): each child gets only its own."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TD_")}, **(own or {})}


class Stack:
    """The child processes, stopped in reverse start order."""

    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        # Own sessions: Ctrl-C reaches only this script, which then stops the children in order
        # (gateway before backend, backend last so it can stop its PostgreSQL).
        process = subprocess.Popen(command, env=child_env(env), start_new_session=True)
        self.processes.append((name, process))

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with code {process.returncode}")

    def stop(self) -> None:
        # A second Ctrl-C (or a supervisor forwarding one) must not cut the shutdown short and
        # leave services behind; every wait below is bounded, then the process is killed.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop within 15 s; killing it", file=sys.stderr)
                    process.kill()
                    process.wait()


def wait_until_up(stack: Stack, url: str) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        stack.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {START_DEADLINE_S} s")


def td_backend(*args: str) -> str:
    return subprocess.run(
        [str(BIN / "td-backend"), *args],
        env=child_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def provision(data_dir: Path, ports: argparse.Namespace) -> dict[str, Any]:
    """Create the organisation, gateway, default policy and device through the public API."""
    org = json.loads(td_backend("create-org", "Local organisation", "--data-dir", str(data_dir)))
    admin = httpx.Client(
        base_url=f"http://127.0.0.1:{ports.backend_port}",
        headers={"Authorization": f"Bearer {org['admin_token']}"},
        timeout=30,
    )
    with admin:
        gateway = admin.post("/v2/gateways", json={"name": "local-gateway"}).raise_for_status()
        policy = admin.post(
            "/v2/policies", json={"name": "Default", "body": {}, "is_default": True}
        ).raise_for_status()
        devsim_password = secrets.token_urlsafe(12)
        device = admin.post(
            "/v2/devices",
            json={
                "gateway_id": gateway.json()["id"],
                "vendor": "hikvision",
                "name": "Front door (simulated)",
                "host": "127.0.0.1",
                "port": ports.devsim_port,
                "username": "admin",
                "password": devsim_password,
            },
        ).raise_for_status()
    return {
        "backend_url": f"http://127.0.0.1:{ports.backend_port}",
        "gateway_url": f"http://127.0.0.1:{ports.gateway_port}",
        "devsim_port": ports.devsim_port,
        "org_id": org["org_id"],
        "admin_token": org["admin_token"],
        "gateway_id": gateway.json()["id"],
        "api_key": gateway.json()["api_key"],
        "enrollment_key": gateway.json()["enrollment_key"],
        "policy_id": policy.json()["id"],
        "device_id": device.json()["id"],
        "devsim_password": devsim_password,
    }


# The simulated terminal's clock runs at UTC+8 (its default zone); the organisation uses the
# same zone so the demo crowd's punches land on the shift's wall-clock times.
DEMO_ZONE = dt.timezone(dt.timedelta(hours=8))
DEMO_ZONE_NAME = "Asia/Shanghai"
DEMO_AGENT_UID = "demo-pc"


def demo_shift_start(now: dt.datetime | None = None) -> dt.datetime:
    """A shift that started four hours ago (on the hour), so the crowd has arrived (some of
    them late) and leaves later while you watch."""
    local = (now or dt.datetime.now(dt.UTC)).astimezone(DEMO_ZONE) - dt.timedelta(hours=4)
    return local.replace(minute=0, second=0, microsecond=0)


def provision_people(admin: httpx.Client) -> dict[str, Any]:
    """The demo crowd as employees (one owning the demo PC), their shift, the org's zone."""
    shift = admin.post(
        "/v2/shifts",
        json={"name": "Demo day", "start": "09:00", "end": "17:00",
              "working_days": [0, 1, 2, 3, 4, 5, 6], "late_grace_s": 300},
    ).raise_for_status()  # fmt: skip
    admin.patch(
        "/v2/organization",
        json={"time_zone": DEMO_ZONE_NAME, "default_shift_id": shift.json()["id"]},
    ).raise_for_status()
    for person in DEMO_PEOPLE:
        admin.post(
            "/v2/employees",
            json={
                "employee_no": person.employee_no,
                "name": person.name,
                "department": person.department,
                "card_nos": [person.card_no],
                "agent_uids": [DEMO_AGENT_UID] if person is DEMO_PEOPLE[0] else [],
            },
        ).raise_for_status()
    return {"demo_shift_id": shift.json()["id"]}


def anchor_demo_shift(info: dict[str, Any], start: dt.datetime) -> None:
    """Move the demo shift to `start`, where the simulated crowd's day is anchored."""
    end = start + dt.timedelta(hours=SHIFT_HOURS)
    with httpx.Client(
        base_url=info["backend_url"],
        headers={"Authorization": f"Bearer {info['admin_token']}"},
        timeout=30,
    ) as admin:
        if "demo_shift_id" not in info:
            info.update(provision_people(admin))
        admin.patch(
            f"/v2/shifts/{info['demo_shift_id']}",
            json={"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")},
        ).raise_for_status()


def register_demo_agent(stack_info: dict[str, Any]) -> str:
    """Registers the demo agent; a later run re-registers it with the token it got last
    (the gateway hands a registered agent_uid only to the holder of its token)."""
    headers = {"X-Enrollment-Key": stack_info["enrollment_key"]}
    if stack_info.get("demo_agent_token"):
        headers["Authorization"] = f"Bearer {stack_info['demo_agent_token']}"
    response = httpx.post(
        f"{stack_info['gateway_url']}/v1/agents/register",
        headers=headers,
        json={"agent_uid": DEMO_AGENT_UID, "hostname": "DEMO-PC", "os": "Windows 11"},
        timeout=10,
    ).raise_for_status()
    return str(response.json()["token"])


def summary(info: dict[str, Any], agent_token: str, work_date: dt.date) -> str:
    backend, gateway = info["backend_url"], info["gateway_url"]
    admin = f"-H 'Authorization: Bearer {info['admin_token']}'"
    return f"""
TD stack is up (Ctrl-C stops everything)

  backend   {backend}   (OpenAPI: {backend}/schema, health: {backend}/ready)
  dashboard {backend}/dashboard   (sign in with the admin token below)
  gateway   {gateway}   (health: {gateway}/health, agent API: {gateway}/schema)
  terminal  http://127.0.0.1:{info["devsim_port"]}   (simulated Hikvision, device {info["device_id"]})
  database  {info["database_url"]}

  admin token     {info["admin_token"]}
  gateway id      {info["gateway_id"]}
  gateway API key {info["api_key"]}
  enrollment key  {info["enrollment_key"]}

Post a log as an agent:
  curl -s -X POST {gateway}/v1/logs -H 'Authorization: Bearer {agent_token}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"logs":[{{"kind":"idle","id":"'$(cat /proc/sys/kernel/random/uuid)'","ts":"'$(date -u +%FT%TZ)'","duration_ms":60000}}]}}'

Change the default policy (agents long-polling /v1/policy get it at once):
  curl -s -X PUT {backend}/v2/policies/{info["policy_id"]} {admin} \\
    -H 'Content-Type: application/json' -d '{{"body":{{"upload_interval_s":30,"track_urls":true}}}}'

Open the door on the simulated terminal:
  curl -s -X POST {backend}/v2/devices/{info["device_id"]}/commands {admin} \\
    -H 'Content-Type: application/json' -d '{{"type":"open_door","payload":{{"door":1}}}}'

Today's attendance (the simulated door badges the demo crowd in and out; a few are late):
  curl -s '{backend}/v2/attendance?from={work_date}&to={work_date}' {admin}

See what arrived:  curl -s '{backend}/v2/logs?limit=20' {admin}
Load test:         make loadtest   (locust UI on http://127.0.0.1:8089)
"""


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the whole TD stack locally.")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TD_DATA_DIR", ".td")))
    parser.add_argument("--backend-port", type=int, default=8000)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--devsim-port", type=int, default=18080)
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack_file = data_dir / "stack.json"
    stack = Stack()
    with sigterm_as_keyboard_interrupt():
        try:
            stack.start(
                "backend",
                [str(BIN / "td-backend"), "serve", "--host", "127.0.0.1",
                 "--port", str(args.backend_port),
                 "--data-dir", str(data_dir)],
            )  # fmt: skip
            wait_until_up(stack, f"http://127.0.0.1:{args.backend_port}/ready")
            if stack_file.exists():
                info = json.loads(stack_file.read_text())
            else:
                info = provision(data_dir, args)
            info["backend_url"] = f"http://127.0.0.1:{args.backend_port}"
            info["database_url"] = td_backend("dburl", "--data-dir", str(data_dir))
            shift_start = demo_shift_start()
            anchor_demo_shift(info, shift_start)
            stack_file.touch(mode=0o600)
            stack_file.write_text(json.dumps(info, indent=2))

            stack.start(
                "terminal simulator",
                [str(BIN / "td-devsim"), "hikvision", "--host", "127.0.0.1",
                 "--port", str(info["devsim_port"]), "--user", "admin",
                 "--play-attendance", "--shift-start", shift_start.strftime("%H:%M")],
                env={"TD_DEVSIM_PASSWORD": info["devsim_password"]},  # not on the command line
            )  # fmt: skip
            stack.start(
                "gateway",
                [str(BIN / "td-gateway"), "run"],
                env={
                    "TD_BACKEND_URL": info["backend_url"],
                    "TD_GATEWAY_API_KEY": info["api_key"],
                    "TD_ENROLLMENT_KEY": info["enrollment_key"],
                    "TD_LISTEN": info["gateway_url"].removeprefix("http://"),
                    "TD_DATA_DIR": str(data_dir / "gateway"),
                },
            )
            wait_until_up(stack, f"{info['gateway_url']}/health")
            info["demo_agent_token"] = register_demo_agent(info)
            stack_file.write_text(json.dumps(info, indent=2))
            print(summary(info, info["demo_agent_token"], shift_start.date()), flush=True)
            while True:
                stack.check_alive()
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping…", file=sys.stderr)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
