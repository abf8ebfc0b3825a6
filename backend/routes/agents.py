"""Agents seen by the organisation's gateways, and which policy each follows."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
from litestar import Controller, get, patch
from litestar.params import FromPath, FromQuery, JSONBody

from backend.errors import InvalidRequest
from backend.routes.common import (
    ADMIN_ERRORS,
    DEFAULT_LIMIT,
    Limit,
    OrgId,
    ServicesDep,
    keyset_rows,
    next_cursor,
    org_row,
)
from backend.tables import AgentInstance, Policy


class AgentOut(msgspec.Struct):
    id: uuid.UUID
    gateway_id: uuid.UUID
    agent_uid: str
    hostname: str | None
    os: str | None
    version: str | None
    policy_id: uuid.UUID | None
    status: str
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


class AgentPage(msgspec.Struct):
    items: list[AgentOut]
    next_cursor: str | None


class AgentChange(msgspec.Struct):
    # None: follow the organisation's default policy.
    policy_id: uuid.UUID | None


_COLUMNS = (
    AgentInstance.id,
    AgentInstance.gateway_id,
    AgentInstance.agent_uid,
    AgentInstance.hostname,
    AgentInstance.os,
    AgentInstance.version,
    AgentInstance.policy_id,
    AgentInstance.status,
    AgentInstance.first_seen_at,
    AgentInstance.last_seen_at,
)


async def agent_out(org_id: uuid.UUID, agent_id: uuid.UUID) -> AgentOut:
    row = await org_row(AgentInstance, org_id, agent_id, "agent", *_COLUMNS)
    return msgspec.convert(row, AgentOut)


class AgentController(Controller):
    path = "/v2/agents"
    tags = ["agents"]

    @get("/", responses=ADMIN_ERRORS)
    async def list_agents(
        self,
        org_id: OrgId,
        gateway_id: FromQuery[uuid.UUID | None] = None,
        status: FromQuery[str | None] = None,
        agent_uid: FromQuery[str | None] = None,
        hostname: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> AgentPage:
        query = AgentInstance.select(*_COLUMNS).where(AgentInstance.org_id == org_id)
        if gateway_id is not None:
            query = query.where(AgentInstance.gateway_id == gateway_id)
        if status is not None:
            query = query.where(AgentInstance.status == status.upper())
        if agent_uid is not None:
            query = query.where(AgentInstance.agent_uid == agent_uid)
        if hostname is not None:
            query = query.where(AgentInstance.hostname == hostname)
        rows = await keyset_rows(
            query, AgentInstance.first_seen_at, AgentInstance.id, cursor, limit
        )
        return AgentPage(
            items=[msgspec.convert(row, AgentOut) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "first_seen_at"),
        )

    @get("/{agent_id:uuid}", responses=ADMIN_ERRORS)
    async def get_agent(self, org_id: OrgId, agent_id: FromPath[uuid.UUID]) -> AgentOut:
        return await agent_out(org_id, agent_id)

    @patch("/{agent_id:uuid}", responses=ADMIN_ERRORS)
    async def change_agent(
        self,
        org_id: OrgId,
        services: ServicesDep,
        agent_id: FromPath[uuid.UUID],
        data: JSONBody[AgentChange],
    ) -> AgentOut:
        """Assign a policy (or none: the org default); pushed to the agent's gateway."""
        current = await agent_out(org_id, agent_id)
        if data.policy_id is not None and not await Policy.exists().where(
            (Policy.id == data.policy_id) & (Policy.org_id == org_id)
        ):
            raise InvalidRequest(f"policy_id: no policy {data.policy_id} in this organisation")
        await AgentInstance.update({AgentInstance.policy_id: data.policy_id}).where(
            AgentInstance.id == agent_id
        )
        if services.control is not None:
            await services.control.agent_assigned(current.gateway_id, agent_id)
        return await agent_out(org_id, agent_id)
