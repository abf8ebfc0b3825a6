"""Locust: workstation agents talking to a gateway.

Each user registers with the enrollment key, posts realistic log batches on its policy's
upload interval, and long-polls its policy in the background like the real agent does.
The ids of every acknowledged (202) log go to a file per process under TD_ACK_DIR, so the
headless runner can check PostgreSQL holds each exactly once.

Settings (environment): TD_ENROLLMENT_KEY (default: the one `make run` wrote to
.td/stack.json), TD_ACK_DIR (optional),
TD_LOADTEST_UPLOAD_INTERVAL_S (overrides the policy's interval, to make short runs busy),
TD_LOADTEST_BATCH (logs per post; default: the policy's log_batch_max capped at 100).
"""

from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, events, task
from locust.exception import StopUser

from loadtests.logs import make_batch


def _enrollment_key() -> str:
    if key := os.environ.get("TD_ENROLLMENT_KEY"):
        return key
    stack_file = Path(os.environ.get("TD_DATA_DIR", ".td")) / "stack.json"
    if stack_file.exists():
        return str(json.loads(stack_file.read_text())["enrollment_key"])
    return ""


ENROLLMENT_KEY = _enrollment_key()
ACK_DIR = os.environ.get("TD_ACK_DIR")
INTERVAL_OVERRIDE = os.environ.get("TD_LOADTEST_UPLOAD_INTERVAL_S")
BATCH_OVERRIDE = os.environ.get("TD_LOADTEST_BATCH")
POLICY_WAIT_S = 30

_ack_file: Any = None


@events.init.add_listener
def _open_ack_file(**_: Any) -> None:
    global _ack_file
    if ACK_DIR:
        os.makedirs(ACK_DIR, exist_ok=True)
        _ack_file = open(  # noqa: SIM115 - open for the whole run, closed on quit
            os.path.join(ACK_DIR, f"acks-{os.getpid()}.txt"), "a", buffering=1
        )


@events.quitting.add_listener
def _close_ack_file(**_: Any) -> None:
    if _ack_file is not None:
        _ack_file.close()


class Agent(HttpUser):
    # Pacing comes from the policy's upload interval, set per user in on_start.
    def wait_time(self) -> float:
        return self.interval_s * random.uniform(0.9, 1.1)

    def on_start(self) -> None:
        if not ENROLLMENT_KEY:
            raise StopUser("TD_ENROLLMENT_KEY is not set")
        self.rng = random.Random()
        self.agent_uid = f"load-{uuid.uuid4().hex[:12]}"
        with self.client.post(
            "/v1/agents/register",
            json={
                "agent_uid": self.agent_uid,
                "hostname": f"PC-{self.agent_uid[-6:].upper()}",
                "os": "Windows 11 Pro 23H2",
                "version": "4.2.0",
            },
            headers={"X-Enrollment-Key": ENROLLMENT_KEY},
            name="/v1/agents/register",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"register answered {response.status_code}: {response.text}")
                raise StopUser()
            body = response.json()
        self.auth = {"Authorization": f"Bearer {body['token']}"}
        self._apply_policy(body["policy"])
        self.etag = None
        self.poller = gevent.spawn(self._long_poll_policy)

    def on_stop(self) -> None:
        self.poller.kill(block=False)

    def _apply_policy(self, policy: dict[str, Any]) -> None:
        policy_body = policy["body"]
        self.interval_s = float(INTERVAL_OVERRIDE or policy_body["upload_interval_s"])
        self.batch_size = int(BATCH_OVERRIDE or min(policy_body["log_batch_max"], 100))

    def _long_poll_policy(self) -> None:
        while True:
            headers = dict(self.auth)
            if self.etag:
                headers["If-None-Match"] = self.etag
            with self.client.get(
                f"/v1/policy?wait={POLICY_WAIT_S}",
                headers=headers,
                name="/v1/policy (long-poll)",
                catch_response=True,
            ) as response:
                if response.status_code == 200:
                    self.etag = response.headers.get("ETag")
                    self._apply_policy(response.json())
                elif response.status_code == 304:
                    response.success()
                else:
                    response.failure(f"policy answered {response.status_code}")
                    gevent.sleep(1)

    @task
    def post_logs(self) -> None:
        logs = make_batch(self.rng, self.rng.randint(max(1, self.batch_size // 2), self.batch_size))
        with self.client.post(
            "/v1/logs", json={"logs": logs}, headers=self.auth, name="/v1/logs", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"logs answered {response.status_code}: {response.text[:200]}")
                return
            if _ack_file is not None:
                _ack_file.write("".join(f"{log['id']}\n" for log in logs))
