"""Agents as a desktop client behaves: register once, keep the token, post realistic logs,
and resend the very same body (same log ids) until the gateway answers 202.

A post whose answer never came (the gateway was killed mid-request) may or may not have been
committed; resending it is what a real agent does, and the backend must still hold each log
once. Only ids answered 202 count as acknowledged.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter

import httpx
import trio

from loadtests.logs import make_batch

POST_TIMEOUT_S = 10.0
RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0
RETRY_AFTER_CAP_S = 5.0


class AgentStats:
    """What all agents saw, shared by their tasks (one trio thread: no locks needed)."""

    def __init__(self) -> None:
        self.acknowledged: list[uuid.UUID] = []
        self.posts = 0
        self.retries = 0
        # Answers other than 202 (and transport errors by class name), for the report.
        self.answers: Counter[str] = Counter()
        # Batches given up on: a 4xx other than 401/408/429 for realistic logs is a finding.
        self.refused_batches = 0
        self.refused_logs = 0
        self.reregistered = 0


async def run_agent(
    number: int,
    gateway_url: str,
    enrollment_key: str,
    stats: AgentStats,
    stop: trio.Event,
    *,
    seed: int,
    batch_size: int,
    interval_s: float,
    give_up: trio.Event,
) -> None:
    """Post batches until `stop`; finish the batch in flight unless `give_up` is set too."""
    rng = random.Random(seed * 1_000_003 + number)
    uid = f"chaos-agent-{number:04d}"
    async with httpx.AsyncClient(base_url=gateway_url, timeout=POST_TIMEOUT_S) as client:
        token = await _register(client, uid, enrollment_key, stats, give_up)
        while not stop.is_set() and token:
            batch = make_batch(rng, batch_size)
            body = json.dumps({"logs": batch}).encode()
            outcome = await _post_until_answered(client, token, body, stats, give_up)
            if outcome == "unauthorized":
                # The gateway forgot this agent's token: a finding (tokens survive restarts),
                # counted; the agent enrols again as a real one would, and resends.
                stats.reregistered += 1
                token = await _register(client, uid, enrollment_key, stats, give_up)
                continue
            if outcome == "acknowledged":
                stats.acknowledged.extend(uuid.UUID(log["id"]) for log in batch)
            elif outcome == "refused":
                stats.refused_batches += 1
                stats.refused_logs += len(batch)
            if interval_s:
                with trio.move_on_at(trio.current_time() + interval_s):
                    await stop.wait()


async def _register(
    client: httpx.AsyncClient,
    uid: str,
    enrollment_key: str,
    stats: AgentStats,
    give_up: trio.Event,
) -> str:
    delay = RETRY_BASE_S
    while not give_up.is_set():
        try:
            response = await client.post(
                "/v1/agents/register",
                json={"agent_uid": uid, "hostname": uid.upper(), "os": "Windows 11"},
                headers={"X-Enrollment-Key": enrollment_key},
            )
            if response.status_code == 200:
                token: str = response.json()["token"]
                return token
            stats.answers[f"register {response.status_code}"] += 1
        except httpx.TransportError as exc:
            stats.answers[f"register {type(exc).__name__}"] += 1
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_CAP_S)
    return ""


async def _post_until_answered(
    client: httpx.AsyncClient,
    token: str,
    body: bytes,
    stats: AgentStats,
    give_up: trio.Event,
) -> str:
    """'acknowledged', 'refused' (a 4xx that resending cannot fix), 'unauthorized' or 'gave up'."""
    delay = RETRY_BASE_S
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    first = True
    while not give_up.is_set():
        if not first:
            stats.retries += 1
        first = False
        stats.posts += 1
        try:
            response = await client.post("/v1/logs", content=body, headers=headers)
        except httpx.TransportError as exc:
            stats.answers[type(exc).__name__] += 1
        else:
            status = response.status_code
            if status == 202:
                return "acknowledged"
            stats.answers[str(status)] += 1
            if status == 401:
                return "unauthorized"
            if 400 <= status < 500 and status not in (408, 429):
                return "refused"
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                await trio.sleep(min(float(retry_after), RETRY_AFTER_CAP_S))
                continue
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_CAP_S)
    return "gave up"
