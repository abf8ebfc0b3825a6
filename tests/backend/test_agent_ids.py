"""One agent id: a new agent row adopts the id its gateway gave the agent at registration,
but never one that another row (of any gateway or organisation) already has, and a deleted
agent is not brought back by a gateway that has not heard of the deletion yet."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.backend.conftest import Org, batch, create_gateway, log

pytestmark = pytest.mark.anyio


def with_ids(groups: dict[str, list[dict[str, Any]]], ids: dict[str, str]) -> dict[str, Any]:
    body = batch(groups)
    for group in body["groups"]:
        group["agent_id"] = ids.get(group["agent_uid"])
    return body


async def ingest(client: AsyncTestClient[Litestar], api_key: str, body: Any) -> None:
    answer = await client.post(
        "/v2/ingest/logs",
        content=msgspec.json.encode(body),
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text


async def agents(client: AsyncTestClient[Litestar], org: Org) -> dict[str, dict[str, Any]]:
    items = (await client.get("/v2/agents", headers=org.headers)).json()["items"]
    return {f"{a['gateway_id']}/{a['agent_uid']}": a for a in items}


async def test_a_new_agent_takes_its_gateways_id_and_logs_are_found_by_it(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    agent_id = str(uuid.uuid4())
    sent = log()
    await ingest(client, gateway["api_key"], with_ids({"pc-1": [sent]}, {"pc-1": agent_id}))
    listed = await agents(client, org)
    assert listed[f"{gateway['id']}/pc-1"]["id"] == agent_id
    found = await client.get("/v2/logs", params={"agent_id": agent_id}, headers=org.headers)
    assert [item["id"] for item in found.json()["items"]] == [sent["id"]]


async def test_an_id_already_taken_is_never_bound_to_another_gateways_agent(
    client: AsyncTestClient[Litestar], new_org: Any
) -> None:
    a, b = await new_org("a"), await new_org("b")
    gateway_a, other_a = await create_gateway(client, a), await create_gateway(client, a)
    gateway_b = await create_gateway(client, b)
    taken = str(uuid.uuid4())
    await ingest(client, gateway_a["api_key"], with_ids({"pc": [log()]}, {"pc": taken}))

    # The same id from another org's gateway and from another gateway of the same org.
    await ingest(client, gateway_b["api_key"], with_ids({"pc": [log()]}, {"pc": taken}))
    await ingest(client, other_a["api_key"], with_ids({"pc": [log()]}, {"pc": taken}))

    own = (await agents(client, a))[f"{gateway_a['id']}/pc"]
    assert own["id"] == taken
    assert (await agents(client, a))[f"{other_a['id']}/pc"]["id"] != taken
    assert (await agents(client, b))[f"{gateway_b['id']}/pc"]["id"] != taken
    # Org A's agent still has exactly its own logs.
    found = await client.get("/v2/logs", params={"agent_id": taken}, headers=a.headers)
    assert len(found.json()["items"]) == 1
    assert (await client.get(f"/v2/agents/{taken}", headers=b.headers)).status_code == 404


async def test_ids_that_cannot_be_adopted_still_make_agents(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    shared = str(uuid.uuid4())
    body = with_ids(
        {"bad": [log()], "twin-1": [log()], "twin-2": [log()]},
        {"bad": "not-a-uuid", "twin-1": shared, "twin-2": shared},
    )
    await ingest(client, gateway["api_key"], body)
    listed = await agents(client, org)
    assert {key.split("/")[1] for key in listed} == {"bad", "twin-1", "twin-2"}
    assert shared not in {agent["id"] for agent in listed.values()}


async def test_a_deleted_agent_stays_deleted_while_its_gateway_catches_up(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    agent_id = str(uuid.uuid4())
    await ingest(client, gateway["api_key"], with_ids({"pc": [log()]}, {"pc": agent_id}))
    deleted = await client.delete(f"/v2/agents/{agent_id}", headers=org.headers)
    assert deleted.status_code == 204
    assert await agents(client, org) == {}

    # The gateway had not heard yet: its logs are stored under the id, no agent comes back.
    late = log()
    await ingest(client, gateway["api_key"], with_ids({"pc": [late]}, {"pc": agent_id}))
    assert await agents(client, org) == {}
    found = await client.get("/v2/logs", params={"agent_id": agent_id}, headers=org.headers)
    assert late["id"] in {item["id"] for item in found.json()["items"]}


async def test_logs_without_the_gateways_id_after_a_deletion_stay_with_the_deleted_agent(
    client: AsyncTestClient[Litestar], org: Org
) -> None:
    gateway = await create_gateway(client, org)
    agent_id = str(uuid.uuid4())
    await ingest(client, gateway["api_key"], with_ids({"pc": [log()]}, {"pc": agent_id}))
    assert (await client.delete(f"/v2/agents/{agent_id}", headers=org.headers)).status_code == 204

    # Buffered before the gateway forgot the agent, uploaded after: no id in the group.
    late = log()
    await ingest(client, gateway["api_key"], batch({"pc": [late]}))
    assert await agents(client, org) == {}
    found = await client.get("/v2/logs", params={"agent_id": agent_id}, headers=org.headers)
    assert late["id"] in {item["id"] for item in found.json()["items"]}

    # The uid registered anew at the gateway (a new id): a new agent.
    fresh = str(uuid.uuid4())
    await ingest(client, gateway["api_key"], with_ids({"pc": [log()]}, {"pc": fresh}))
    assert [a["id"] for a in (await agents(client, org)).values()] == [fresh]
