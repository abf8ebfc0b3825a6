"""`make run`: the whole stack on this machine, on the embedded PostgreSQL.

Starts `td-backend serve` (state under .td/backend), makes an organisation, a gateway and a
simulated Hikvision terminal the first time (remembered in .td/devstack.json), then runs
`td-gateway run` and `td-devsim hikvision` against it. Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

BIN = Path(sys.executable).parent
ROOT = Path(".td")
STATE_FILE = ROOT / "devstack.json"
BACKEND_PORT = int(os.environ.get("TD_DEV_BACKEND_PORT", "8000"))
GATEWAY_LISTEN = os.environ.get("TD_DEV_GATEWAY_LISTEN", "127.0.0.1:8080")
DEVSIM_PORT = int(os.environ.get("TD_DEV_DEVSIM_PORT", "18080"))
BACKEND_URL = f"http://127.0.0.1:{BACKEND_PORT}"


class Stack:
    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # TD_* names overlap between the services (TD_DATA_DIR, TD_LOG_LEVEL): each child
        # gets only its own.
        base = {k: v for k, v in os.environ.items() if not k.startswith("TD_")}
        process = subprocess.Popen([str(BIN / args[0]), *args[1:]], env={**base, **env})
        self.processes.append((name, process))
        return process

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def watch(self) -> int:
        """Block until a child exits; returns its exit code."""
        while True:
            for name, process in self.processes:
                code = process.poll()
                if code is not None:
                    print(f"devstack: {name} exited with {code}; stopping the rest", flush=True)
                    return code
            time.sleep(0.5)


def wait_ready(url: str, process: subprocess.Popen[bytes], within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"devstack: {url} exited before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"devstack: {url} not ready after {within_s:g} s")


def first_run_setup(backend_env: dict[str, str], devsim_password: str) -> dict[str, Any]:
    created = subprocess.run(
        [str(BIN / "td-backend"), "create-org", "dev"],
        env=backend_env,
        capture_output=True,
        check=True,
    )
    org = json.loads(created.stdout)
    admin = httpx.Client(
        base_url=BACKEND_URL, headers={"Authorization": f"Bearer {org['admin_token']}"}
    )
    with admin:
        gateway = admin.post("/v2/gateways", json={"name": "dev-gateway"}).raise_for_status()
        policy = {"name": "default", "body": {}, "is_default": True}
        created_policy = admin.post("/v2/policies", json=policy).raise_for_status()
        device = {
            "gateway_id": gateway.json()["id"],
            "vendor": "hikvision",
            "name": "simulated door",
            "host": "127.0.0.1",
            "port": DEVSIM_PORT,
            "username": "admin",
            "password": devsim_password,
        }
        created_device = admin.post("/v2/devices", json=device).raise_for_status()
    return {
        "org_id": org["org_id"],
        "admin_token": org["admin_token"],
        "gateway_id": gateway.json()["id"],
        "api_key": gateway.json()["api_key"],
        "enrollment_key": gateway.json()["enrollment_key"],
        "devsim_password": devsim_password,
        "policy_id": created_policy.json()["id"],
        "device_id": created_device.json()["id"],
    }


def summary(state: dict[str, Any]) -> str:
    gateway = f"http://{GATEWAY_LISTEN}"
    admin = f"-H 'Authorization: Bearer {state['admin_token']}'"
    json_type = "-H 'Content-Type: application/json'"
    log = (
        '{"logs": [{"kind": "idle", "id": "\'$(python3 -c "import uuid; print(uuid.uuid4())")\'",'
        ' "ts": "\'$(date -u +%Y-%m-%dT%H:%M:%SZ)\'", "duration_ms": 60000}]}'
    )
    return "\n".join(
        [
            "",
            f"backend   {BACKEND_URL}  (OpenAPI: {BACKEND_URL}/schema)",
            f"gateway   {gateway}",
            f"devsim    http://127.0.0.1:{DEVSIM_PORT}  (simulated Hikvision terminal)",
            f"admin token     {state['admin_token']}",
            f"gateway id      {state['gateway_id']}",
            f"enrollment key  {state['enrollment_key']}",
            f'psql            psql "$({BIN / "td-backend"} dburl --data-dir {ROOT / "backend"})"',
            "",
            "# 1. an agent registers with the gateway and posts a log:",
            f"TOKEN=$(curl -s -X POST {gateway}/v1/agents/register {json_type}"
            f" -H 'X-Enrollment-Key: {state['enrollment_key']}'"
            """ -d '{"agent_uid": "pc-1", "hostname": "pc-1"}' | python3 -c """
            """'import json,sys; print(json.load(sys.stdin)["token"])')""",
            f'curl -s -X POST {gateway}/v1/logs {json_type} -H "Authorization: Bearer $TOKEN"'
            f" -d '{log}'",
            "# 2. change the default policy (pushed to the gateway and its agents):",
            f"curl -s -X PUT {BACKEND_URL}/v2/policies/{state['policy_id']} {admin} {json_type}"
            """ -d '{"body": {"idle_threshold_s": 120}}'""",
            "# 3. open the simulated door:",
            f"curl -s -X POST {BACKEND_URL}/v2/devices/{state['device_id']}/commands {admin}"
            f""" {json_type} -d '{{"type": "open_door", "payload": {{"door": 1}}}}'""",
            "",
            f"(kept in {STATE_FILE} for the next run; Ctrl-C stops the stack)",
            "",
        ]
    )


def main() -> int:
    ROOT.mkdir(exist_ok=True)
    stack = Stack()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    backend_env = {"TD_DATA_DIR": str(ROOT / "backend")}
    try:
        backend = stack.start(
            "backend", ["td-backend", "serve", "--port", str(BACKEND_PORT)], backend_env
        )
        wait_ready(f"{BACKEND_URL}/ready", backend)
        if STATE_FILE.exists():
            state = json.loads(STATE_FILE.read_text())
        else:
            state = first_run_setup(backend_env, secrets.token_urlsafe(12))
            STATE_FILE.write_text(json.dumps(state, indent=2))
            STATE_FILE.chmod(0o600)
        stack.start(
            "devsim",
            [
                "td-devsim",
                "hikvision",
                "--port",
                str(DEVSIM_PORT),
                "--user",
                "admin",
                "--password",
                state["devsim_password"],
            ],
            {},
        )
        gateway_env = {
            "TD_BACKEND_URL": BACKEND_URL,
            "TD_GATEWAY_API_KEY": state["api_key"],
            "TD_LISTEN": GATEWAY_LISTEN,
            "TD_DATA_DIR": str(ROOT / "gateway"),
        }
        stack.start("gateway", ["td-gateway", "run"], gateway_env)
        print(summary(state), flush=True)
        return stack.watch()
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
