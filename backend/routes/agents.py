"""Agents seen by the organisation's gateways, which policy each follows, and operators'
decisions about them: revoke (its token stops working at its gateway, its uid cannot
register again), reset (its uid may register once more without its token, e.g. a
re-imaged PC) and delete (forgotten here and at the gateway; its logs stay).

Each decision is stamped with the database clock and reaches the gateway over the control
channel at once, and again on every (re)connect, so a gateway that was away gets it too.
"""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody

from backend.accounts.roles import Permission, needs
from backend.audit import record
from backend.errors import InvalidRequest
from backend.logging import get_logger
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
from backend.services import Services
from backend.tables import AgentInstance, Policy

log = get_logger("backend.agents")


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
    # ACTIVE, REVOKED (by an operator) or RESET (may register once without its token).
    access: str = "ACTIVE"


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
    AgentInstance.access,
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

    @patch("/{agent_id:uuid}", responses=ADMIN_ERRORS, opt=needs(Permission.FLEET))
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
        async with AgentInstance._meta.db.transaction():
            await AgentInstance.update({AgentInstance.policy_id: data.policy_id}).where(
                AgentInstance.id == agent_id
            )
            await record(
                None,
                "agent.update",
                "agent",
                agent_id,
                before={"policy_id": current.policy_id},
                after={"policy_id": data.policy_id},
            )
        if services.control is not None:
            await services.control.agent_assigned(current.gateway_id, agent_id)
        return await agent_out(org_id, agent_id)

    @post(
        "/{agent_id:uuid}/revoke",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.FLEET),
    )
    async def revoke_agent(
        self, org_id: OrgId, services: ServicesDep, agent_id: FromPath[uuid.UUID]
    ) -> AgentOut:
        """The agent's token stops working at its gateway; its uid cannot register again
        until it is reset."""
        return await _decide(services, org_id, agent_id, "REVOKED")

    @post(
        "/{agent_id:uuid}/reset",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.FLEET),
    )
    async def reset_agent(
        self, org_id: OrgId, services: ServicesDep, agent_id: FromPath[uuid.UUID]
    ) -> AgentOut:
        """The next registration of the agent's uid at its gateway is allowed without the
        agent's token (and ends a revocation)."""
        return await _decide(services, org_id, agent_id, "RESET")

    @delete(
        "/{agent_id:uuid}", status_code=204, responses=ADMIN_ERRORS, opt=needs(Permission.FLEET)
    )
    async def delete_agent(
        self, org_id: OrgId, services: ServicesDep, agent_id: FromPath[uuid.UUID]
    ) -> None:
        """Forget the agent here and at its gateway; its logs stay."""
        current = await agent_out(org_id, agent_id)
        async with services.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO agent_deletions (org_id, gateway_id, agent_uid, agent_id, deleted_at)"
                " SELECT org_id, gateway_id, agent_uid, coalesce(gateway_agent_id, id),"
                " clock_timestamp() FROM agent_instances WHERE id = $1 AND org_id = $2",
                agent_id,
                org_id,
            )
            await conn.execute(
                "DELETE FROM agent_instances WHERE id = $1 AND org_id = $2", agent_id, org_id
            )
            await record(conn, "agent.delete", "agent", agent_id, before=current)
        log.info("agent deleted", agent_id=str(agent_id), gateway_id=str(current.gateway_id))
        if services.control is not None:
            await services.control.agent_access_changed(current.gateway_id)


async def _decide(
    services: Services, org_id: uuid.UUID, agent_id: uuid.UUID, access: str
) -> AgentOut:
    current = await agent_out(org_id, agent_id)
    async with services.pool.acquire() as conn, conn.transaction():
        # clock_timestamp, not now(): two decisions in a row must be ordered at the gateway.
        await conn.execute(
            "UPDATE agent_instances SET access = $3, access_changed_at = clock_timestamp()"
            " WHERE id = $1 AND org_id = $2",
            agent_id,
            org_id,
            access,
        )
        await record(
            conn,
            f"agent.{'revoke' if access == 'REVOKED' else 'reset'}",
            "agent",
            agent_id,
            before={"access": current.access},
            after={"access": access},
        )
    log.info(
        "agent access changed",
        agent_id=str(agent_id),
        gateway_id=str(current.gateway_id),
        access=access,
    )
    if services.control is not None:
        await services.control.agent_access_changed(current.gateway_id)
    return await agent_out(org_id, agent_id)
