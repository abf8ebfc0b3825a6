"""Policies: edit one as a form, watch its rollout per gateway, roll back with a diff."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from backend.accounts.roles import Permission, needs
from backend.dashboard import policy_form, reads
from backend.dashboard.pages import fragment, page
from backend.dashboard.session import Operator, SignedIn, checked_form
from backend.errors import NotFound
from backend.routes.common import services_of
from backend.routes.policies import _new_revision as new_revision
from backend.routes.policies import _push as announce_change
from backend.routes.policies import policy_row, rollout_status
from backend.services import Services
from backend.tables import Policy, PolicyRevision
from protocol.agent import PolicyBody


async def _rollout(services: Services, operator: Operator, policy_id: uuid.UUID) -> dict[str, Any]:
    status = await rollout_status(operator.org_id, policy_id)
    names = {g.id: g.name for g in await reads.gateways(services, operator.org_id)}
    rows = [
        {
            "gateway_id": g.gateway_id,
            "gateway": names.get(g.gateway_id, str(g.gateway_id)),
            "applied_revision": g.applied_revision,
            "acked_at": g.acked_at,
            "in_sync": g.in_sync,
            "refused": g.applied is False,
            "reason": g.reason,
        }
        for g in status.gateways
    ]
    return {
        "revision": status.revision,
        "rows": rows,
        "done": all(r["in_sync"] for r in rows),
        "in_sync": sum(1 for r in rows if r["in_sync"]),
    }


async def _revisions(policy_id: uuid.UUID) -> list[dict[str, Any]]:
    """The newest revisions, each with who saved it (from the audit trail; older ones: none)."""
    rows: list[dict[str, Any]] = await PolicyRevision.raw(
        "SELECT r.revision, r.checksum, r.created_at, a.actor_label AS author"
        " FROM policy_revisions r LEFT JOIN audit_events a ON a.id = r.audit_event_id"
        " WHERE r.policy_id = {} ORDER BY r.revision DESC LIMIT {}",
        policy_id,
        reads.PAGE_ROWS,
    )
    return rows


def _body(row: dict[str, Any]) -> PolicyBody:
    return msgspec.convert(row["body"], PolicyBody)


class PolicyPages(Controller):
    path = "/policies"

    @get("/", include_in_schema=False)
    async def policies(self, request: Request[Any, Any, Any], operator: SignedIn) -> Template:
        services = services_of(request)
        rows = (
            await Policy.select(Policy.id, Policy.name, Policy.revision, Policy.is_default)
            .where(Policy.org_id == operator.org_id)
            .order_by(Policy.name)
            .limit(reads.PAGE_ROWS)
        )
        for row in rows:
            row["rollout"] = await _rollout(services, operator, row["id"])
        return page("policies.html", operator, "policies", policies=rows)

    async def _edit_page(
        self,
        request: Request[Any, Any, Any],
        operator: Operator,
        policy: dict[str, Any],
        form: policy_form.PolicyForm,
        saved: int | None = None,
        status_code: int = 200,
    ) -> Template:
        template = page(
            "policy.html",
            operator,
            "policies",
            policy=policy,
            form=form,
            labels=policy_form.LABELS,
            saved=saved,
            rollout=await _rollout(services_of(request), operator, policy["id"]),
            revisions=await _revisions(policy["id"]),
        )
        template.status_code = status_code
        return template

    @get("/{policy_id:uuid}", include_in_schema=False)
    async def policy(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        policy_id: FromPath[uuid.UUID],
        saved: FromQuery[int | None] = None,
    ) -> Template:
        policy = await policy_row(operator.org_id, policy_id)
        form = policy_form.PolicyForm(policy_form.form_values(policy["name"], _body(policy)))
        return await self._edit_page(request, operator, policy, form, saved)

    @post(
        "/{policy_id:uuid}",
        include_in_schema=False,
        status_code=303,
        opt=needs(Permission.FLEET),
    )
    async def save(
        self, request: Request[Any, Any, Any], operator: SignedIn, policy_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        fields = await checked_form(request, operator)
        policy = await policy_row(operator.org_id, policy_id)
        form, name, body = policy_form.parse(fields)
        if body is not None and fields.get("revision") != str(policy["revision"]):
            form.errors["name"] = (
                f"someone saved revision {policy['revision']} meanwhile;"
                " reload the page to edit the current policy"
            )
            body = None
        if body is None:
            return await self._edit_page(request, operator, policy, form, status_code=400)
        row = await new_revision(operator.org_id, policy_id, body, name)
        await announce_change(services_of(request), operator.org_id, policy_id)
        return Redirect(f"/dashboard/policies/{policy_id}?saved={row['revision']}", status_code=303)

    @get("/{policy_id:uuid}/rollout", include_in_schema=False)
    async def rollout(
        self, request: Request[Any, Any, Any], operator: SignedIn, policy_id: FromPath[uuid.UUID]
    ) -> Template:
        await policy_row(operator.org_id, policy_id)
        rollout = await _rollout(services_of(request), operator, policy_id)
        return fragment("_rollout.html", rollout=rollout, policy_id=policy_id)

    async def _revision(self, policy_id: uuid.UUID, revision: int) -> PolicyBody:
        row = (
            await PolicyRevision.select(PolicyRevision.body)
            .where((PolicyRevision.policy_id == policy_id) & (PolicyRevision.revision == revision))
            .output(load_json=True)
            .first()
        )
        if row is None:
            raise NotFound(f"this policy has no revision {revision}")
        return _body(row)

    @get("/{policy_id:uuid}/rollback/{revision:int}", include_in_schema=False)
    async def rollback_preview(
        self,
        operator: SignedIn,
        policy_id: FromPath[uuid.UUID],
        revision: FromPath[int],
    ) -> Template:
        policy = await policy_row(operator.org_id, policy_id)
        target = await self._revision(policy_id, revision)
        return page(
            "rollback.html",
            operator,
            "policies",
            policy=policy,
            target_revision=revision,
            changes=policy_form.diff(_body(policy), target),
        )

    @post(
        "/{policy_id:uuid}/rollback/{revision:int}",
        include_in_schema=False,
        status_code=303,
        opt=needs(Permission.FLEET),
    )
    async def rollback(
        self,
        request: Request[Any, Any, Any],
        operator: SignedIn,
        policy_id: FromPath[uuid.UUID],
        revision: FromPath[int],
    ) -> Redirect:
        await checked_form(request, operator)
        await policy_row(operator.org_id, policy_id)
        target = await self._revision(policy_id, revision)
        row = await new_revision(operator.org_id, policy_id, target)
        await announce_change(services_of(request), operator.org_id, policy_id)
        return Redirect(f"/dashboard/policies/{policy_id}?saved={row['revision']}", status_code=303)
