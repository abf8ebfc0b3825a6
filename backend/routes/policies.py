"""Policies: revisions with checksums, rollback, one default per organisation, rollout status."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Meta

from backend.accounts.roles import Permission, needs
from backend.audit import record
from backend.errors import Conflict, NotFound
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
from backend.tables import GatewayInstance, GatewayPolicyState, Policy, PolicyRevision
from protocol.agent import PolicyBody
from protocol.bounds import INT32_MAX, NO_NUL
from protocol.codec import policy_checksum

log = get_logger("backend.admin")

Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class PolicyCreate(msgspec.Struct, kw_only=True):
    name: Name
    body: PolicyBody
    is_default: bool = False


class PolicyChange(msgspec.Struct, kw_only=True):
    body: PolicyBody
    name: Name | None = None
    is_default: bool | None = None


class Rollback(msgspec.Struct):
    revision: Annotated[int, Meta(ge=1, le=INT32_MAX)]


class PolicyOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    revision: int
    checksum: str
    body: PolicyBody
    is_default: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class PolicyPage(msgspec.Struct):
    items: list[PolicyOut]
    next_cursor: str | None


class RevisionAuthor(msgspec.Struct):
    kind: str
    id: uuid.UUID | None
    label: str
    role: str


class RevisionOut(msgspec.Struct):
    revision: int
    checksum: str
    body: PolicyBody
    created_at: dt.datetime
    # Who made the revision and the policy's before/after (from the audit trail); None for
    # revisions older than the trail.
    author: RevisionAuthor | None = None
    changes: dict[str, Any] | None = None


class RevisionList(msgspec.Struct):
    items: list[RevisionOut]
    next_cursor: str | None = None


class GatewayRollout(msgspec.Struct):
    gateway_id: uuid.UUID
    applied_revision: int | None
    acked_at: dt.datetime | None
    in_sync: bool
    applied: bool | None
    reason: str | None


class PolicyStatus(msgspec.Struct):
    policy_id: uuid.UUID
    revision: int
    checksum: str
    gateways: list[GatewayRollout]


def policy_out(row: dict[str, Any]) -> PolicyOut:
    return PolicyOut(
        id=row["id"],
        name=row["name"],
        revision=row["revision"],
        checksum=row["checksum"],
        body=msgspec.convert(row["body"], PolicyBody),
        is_default=row["is_default"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def policy_row(org_id: uuid.UUID, policy_id: uuid.UUID) -> dict[str, Any]:
    return await org_row(Policy, org_id, policy_id, "policy")


async def _clear_default(org_id: uuid.UUID) -> None:
    await Policy.update({Policy.is_default: False}).where(
        (Policy.org_id == org_id) & (Policy.is_default == True)  # noqa: E712 (SQL, not Python)
    )


def _audited(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in ("name", "revision", "checksum", "is_default", "body")}


async def _new_revision(
    org_id: uuid.UUID,
    policy_id: uuid.UUID,
    body: PolicyBody,
    name: str | None = None,
    is_default: bool | None = None,
    action: str = "policy.update",
) -> dict[str, Any]:
    """Make `body` the policy's next revision, keeping every earlier one."""
    checksum = policy_checksum(body)
    encoded = msgspec.json.encode(body).decode()
    async with Policy._meta.db.transaction():
        current = await policy_row(org_id, policy_id)
        if is_default is False and current["is_default"]:
            raise Conflict(
                "is_default: this is the organisation's default policy;"
                " make another policy the default instead"
            )
        if is_default:
            await _clear_default(org_id)
        changes: dict[Any, Any] = {
            Policy.revision: Policy.revision + 1,
            Policy.checksum: checksum,
            Policy.body: encoded,
            Policy.updated_at: dt.datetime.now(dt.UTC),
        }
        if name is not None:
            changes[Policy.name] = name
        if is_default is not None:
            changes[Policy.is_default] = is_default
        # The row lock this UPDATE takes orders concurrent changes of one policy.
        updated = (
            await Policy.update(changes).where(Policy.id == policy_id).returning(Policy.revision)
        )
        after = await policy_row(org_id, policy_id)
        event_id = await record(
            None, action, "policy", policy_id, before=_audited(current), after=_audited(after)
        )
        await PolicyRevision.insert(
            PolicyRevision(
                id=uuid.uuid4(),
                policy_id=policy_id,
                revision=updated[0]["revision"],
                checksum=checksum,
                body=encoded,
                audit_event_id=event_id,
            )
        )
    return after


def _revision_out(row: Any) -> RevisionOut:
    author = None
    if row["actor_kind"] is not None:
        author = RevisionAuthor(
            kind=row["actor_kind"], id=row["actor_id"], label=row["actor_label"], role=row["role"]
        )
    return RevisionOut(
        revision=row["revision"],
        checksum=row["checksum"],
        body=msgspec.json.decode(row["body"], type=PolicyBody),
        created_at=row["created_at"],
        author=author,
        changes=msgspec.json.decode(row["changes"]) if row["changes"] is not None else None,
    )


async def _push(services: Services, org_id: uuid.UUID, policy_id: uuid.UUID | None) -> None:
    """Announce the change; `policy_id=None` pushes every policy (the default moved)."""
    log.info("policy changed", org_id=str(org_id), policy_id=str(policy_id) if policy_id else "all")
    if services.control is not None:
        await services.control.policy_changed(org_id, policy_id)


class PolicyController(Controller):
    path = "/v2/policies"
    tags = ["policies"]

    @post("/", status_code=201, responses=ADMIN_ERRORS, opt=needs(Permission.FLEET))
    async def create_policy(
        self, org_id: OrgId, services: ServicesDep, data: JSONBody[PolicyCreate]
    ) -> PolicyOut:
        """Create a policy at revision 1; the organisation's first policy becomes its default."""
        policy_id = uuid.uuid4()
        checksum = policy_checksum(data.body)
        encoded = msgspec.json.encode(data.body).decode()
        async with Policy._meta.db.transaction():
            has_default = await Policy.exists().where(
                (Policy.org_id == org_id) & (Policy.is_default == True)  # noqa: E712
            )
            if data.is_default and has_default:
                await _clear_default(org_id)
            await Policy.insert(
                Policy(
                    id=policy_id,
                    org_id=org_id,
                    name=data.name,
                    is_default=data.is_default or not has_default,
                    revision=1,
                    checksum=checksum,
                    body=encoded,
                )
            )
            event_id = await record(
                None,
                "policy.create",
                "policy",
                policy_id,
                after=_audited(await policy_row(org_id, policy_id)),
            )
            await PolicyRevision.insert(
                PolicyRevision(
                    id=uuid.uuid4(),
                    policy_id=policy_id,
                    revision=1,
                    checksum=checksum,
                    body=encoded,
                    audit_event_id=event_id,
                )
            )
        await _push(services, org_id, None if data.is_default and has_default else policy_id)
        return policy_out(await policy_row(org_id, policy_id))

    @get("/", responses=ADMIN_ERRORS)
    async def list_policies(
        self, org_id: OrgId, cursor: FromQuery[str | None] = None, limit: Limit = DEFAULT_LIMIT
    ) -> PolicyPage:
        query = Policy.select().where(Policy.org_id == org_id)
        rows = await keyset_rows(query, Policy.created_at, Policy.id, cursor, limit)
        return PolicyPage(
            items=[policy_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @get("/{policy_id:uuid}", responses=ADMIN_ERRORS)
    async def get_policy(self, org_id: OrgId, policy_id: FromPath[uuid.UUID]) -> PolicyOut:
        return policy_out(await policy_row(org_id, policy_id))

    @put("/{policy_id:uuid}", responses=ADMIN_ERRORS, opt=needs(Permission.FLEET))
    async def change_policy(
        self,
        org_id: OrgId,
        services: ServicesDep,
        policy_id: FromPath[uuid.UUID],
        data: JSONBody[PolicyChange],
    ) -> PolicyOut:
        """A new revision with this body, pushed to the organisation's connected gateways."""
        row = await _new_revision(org_id, policy_id, data.body, data.name, data.is_default)
        await _push(services, org_id, None if data.is_default else policy_id)
        return policy_out(row)

    @get("/{policy_id:uuid}/revisions", responses=ADMIN_ERRORS)
    async def list_revisions(
        self, org_id: OrgId, services: ServicesDep, policy_id: FromPath[uuid.UUID]
    ) -> RevisionList:
        """Every revision, newest first, with its author and changeset."""
        await policy_row(org_id, policy_id)
        async with services.connection() as conn:
            rows = await conn.fetch(
                "SELECT r.revision, r.checksum, r.body::text AS body, r.created_at,"
                " a.actor_kind, a.actor_id, a.actor_label, a.role, a.changes::text AS changes"
                " FROM policy_revisions r LEFT JOIN audit_events a"
                " ON a.id = r.audit_event_id AND a.org_id = $2"
                " WHERE r.policy_id = $1 ORDER BY r.revision DESC",
                policy_id,
                org_id,
            )
        return RevisionList(items=[_revision_out(r) for r in rows])

    @post(
        "/{policy_id:uuid}/rollback",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.FLEET),
    )
    async def rollback_policy(
        self,
        org_id: OrgId,
        services: ServicesDep,
        policy_id: FromPath[uuid.UUID],
        data: JSONBody[Rollback],
    ) -> PolicyOut:
        """A new revision equal to revision `n` (history is never rewritten)."""
        await policy_row(org_id, policy_id)
        old = (
            await PolicyRevision.select(PolicyRevision.body)
            .where(
                (PolicyRevision.policy_id == policy_id) & (PolicyRevision.revision == data.revision)
            )
            .output(load_json=True)
            .first()
        )
        if old is None:
            raise NotFound(f"policy {policy_id} has no revision {data.revision}")
        row = await _new_revision(
            org_id,
            policy_id,
            msgspec.convert(old["body"], PolicyBody),
            action="policy.rollback",
        )
        await _push(services, org_id, policy_id)
        return policy_out(row)

    @get("/{policy_id:uuid}/status", responses=ADMIN_ERRORS)
    async def policy_status(self, org_id: OrgId, policy_id: FromPath[uuid.UUID]) -> PolicyStatus:
        """Per gateway of the organisation: the revision it applied and whether that is current."""
        return await rollout_status(org_id, policy_id)


async def rollout_status(org_id: uuid.UUID, policy_id: uuid.UUID) -> PolicyStatus:
    """Per gateway of the organisation: the revision it applied and whether that is current."""
    policy = await policy_row(org_id, policy_id)
    gateways = (
        await GatewayInstance.select(GatewayInstance.id)
        .where((GatewayInstance.org_id == org_id) & GatewayInstance.disabled_at.is_null())
        .order_by(GatewayInstance.created_at)
    )
    states = {
        s["gateway_id"]: s
        for s in await GatewayPolicyState.select().where(GatewayPolicyState.policy_id == policy_id)
    }
    rollout = []
    for gateway in gateways:
        state = states.get(gateway["id"])
        rollout.append(
            GatewayRollout(
                gateway_id=gateway["id"],
                applied_revision=state["applied_revision"] if state else None,
                acked_at=state["acked_at"] if state else None,
                in_sync=bool(
                    state and state["applied"] and state["applied_revision"] == policy["revision"]
                ),
                applied=state["applied"] if state else None,
                reason=state["reason"] if state else None,
            )
        )
    return PolicyStatus(
        policy_id=policy_id,
        revision=policy["revision"],
        checksum=policy["checksum"],
        gateways=rollout,
    )
