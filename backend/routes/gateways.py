"""Gateways: create (keys shown once), list with live status, disable / enable / delete, rotate
the API key or the enrollment key."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Meta

from backend.accounts.roles import Permission, needs
from backend.audit import record
from backend.auth import ENROLLMENT_KEY, GATEWAY_API_KEY, new_secret
from backend.errors import Conflict, InvalidRequest
from backend.logging import get_logger
from backend.pki.identify import revoke_all
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
from backend.tables import GatewayInstance, GatewayStatusSnapshot
from protocol.bounds import INT64_MAX, NO_NUL

log = get_logger("backend.admin")

Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class GatewayCreate(msgspec.Struct):
    name: Name


class GatewayCreated(msgspec.Struct):
    id: uuid.UUID
    name: str
    api_key: str
    enrollment_key: str


class KeyRotated(msgspec.Struct):
    id: uuid.UUID
    api_key: str


class EnrollmentKeyRotated(msgspec.Struct):
    id: uuid.UUID
    enrollment_key: str


class GatewayOut(msgspec.Struct):
    id: uuid.UUID
    name: str
    status: str
    disabled: bool
    last_seen_at: dt.datetime | None
    hostname: str | None
    version: str | None
    created_at: dt.datetime
    # Figures from the latest status report; None before the first one.
    queue_depth: int | None
    queue_bytes: int | None
    oldest_age_s: float | None
    dropped_total: int | None
    dead_letter_total: int | None
    fault: str | None
    last_status: dict[str, Any] | None


class GatewayPage(msgspec.Struct):
    items: list[GatewayOut]
    next_cursor: str | None


class SnapshotOut(msgspec.Struct):
    id: int
    ts: dt.datetime
    received_at: dt.datetime
    data: dict[str, Any]


class SnapshotPage(msgspec.Struct):
    items: list[SnapshotOut]
    next_cursor: str | None


def gateway_out(row: dict[str, Any]) -> GatewayOut:
    status = row["last_status"] or {}
    buffer = status.get("buffer") or {}
    return GatewayOut(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        disabled=row["disabled_at"] is not None,
        last_seen_at=row["last_seen_at"],
        hostname=row["hostname"],
        version=row["version"],
        created_at=row["created_at"],
        queue_depth=buffer.get("queue_depth"),
        queue_bytes=buffer.get("queue_bytes"),
        oldest_age_s=buffer.get("oldest_age_s"),
        dropped_total=buffer.get("dropped_total"),
        dead_letter_total=buffer.get("dead_letter_total"),
        fault=status.get("fault"),
        last_status=row["last_status"],
    )


async def gateway_row(org_id: uuid.UUID, gateway_id: uuid.UUID) -> dict[str, Any]:
    return await org_row(GatewayInstance, org_id, gateway_id, "gateway")


async def enabled_gateway_row(org_id: uuid.UUID, gateway_id: uuid.UUID) -> dict[str, Any]:
    """The organisation's gateway, or Conflict when it is disabled: work queued for a gateway
    that cannot connect would only wait until it expires."""
    row = await gateway_row(org_id, gateway_id)
    if row["disabled_at"] is not None:
        raise Conflict(
            f"gateway {gateway_id} is disabled; enable it (POST /v2/gateways/{gateway_id}/enable)"
            " first"
        )
    return row


class GatewayController(Controller):
    path = "/v2/gateways"
    tags = ["gateways"]

    @post("/", status_code=201, responses=ADMIN_ERRORS, opt=needs(Permission.FLEET))
    async def create_gateway(
        self, org_id: OrgId, services: ServicesDep, data: JSONBody[GatewayCreate]
    ) -> GatewayCreated:
        """Create a gateway; its API key and enrollment key are shown only in this answer."""
        api_key = new_secret(GATEWAY_API_KEY)
        enrollment_key = new_secret(ENROLLMENT_KEY)
        gateway_id = uuid.uuid4()
        async with GatewayInstance._meta.db.transaction():
            await GatewayInstance.insert(
                GatewayInstance(
                    id=gateway_id,
                    org_id=org_id,
                    name=data.name,
                    api_key_prefix=api_key.lookup_prefix,
                    api_key_hash=api_key.hash,
                    enrollment_key_encrypted=services.secrets.encrypt(enrollment_key.value),
                )
            )
            await record(None, "gateway.create", "gateway", gateway_id, after={"name": data.name})
        log.info("gateway created", org_id=str(org_id), gateway_id=str(gateway_id))
        return GatewayCreated(
            id=gateway_id,
            name=data.name,
            api_key=api_key.value,
            enrollment_key=enrollment_key.value,
        )

    @get("/", responses=ADMIN_ERRORS)
    async def list_gateways(
        self,
        org_id: OrgId,
        status: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> GatewayPage:
        query = GatewayInstance.select().where(GatewayInstance.org_id == org_id)
        if status is not None:
            query = query.where(GatewayInstance.status == status.upper())
        rows = await keyset_rows(
            query, GatewayInstance.created_at, GatewayInstance.id, cursor, limit
        )
        return GatewayPage(
            items=[gateway_out(row) for row in rows[:limit]],
            next_cursor=next_cursor(rows, limit, "created_at"),
        )

    @get("/{gateway_id:uuid}", responses=ADMIN_ERRORS)
    async def get_gateway(self, org_id: OrgId, gateway_id: FromPath[uuid.UUID]) -> GatewayOut:
        return gateway_out(await gateway_row(org_id, gateway_id))

    @post(
        "/{gateway_id:uuid}/disable",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.FLEET),
    )
    async def disable_gateway(
        self, org_id: OrgId, services: ServicesDep, gateway_id: FromPath[uuid.UUID]
    ) -> GatewayOut:
        """Revoke the gateway: its key stops working at once and its control channel closes."""
        await gateway_row(org_id, gateway_id)
        async with services.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE gateway_instances SET disabled_at = now()"
                " WHERE id = $1 AND org_id = $2 AND disabled_at IS NULL",
                gateway_id,
                org_id,
            )
            # Its open commands can no longer run: end them now rather than at expiry.
            canceled = []
            for table in ("gateway_commands", "device_commands"):
                canceled += await conn.fetch(
                    f"UPDATE {table} SET status = 'CANCELED', finished_at = now(),"
                    " error = 'the gateway was disabled'"
                    " WHERE gateway_id = $1 AND status IN ('PENDING', 'SENT') RETURNING id",
                    gateway_id,
                )
            await record(
                conn,
                "gateway.disable",
                "gateway",
                gateway_id,
                after={"disabled": True, "canceled_commands": [row["id"] for row in canceled]},
            )
        if services.control is not None:
            await services.control.gateway_revoked(gateway_id)
            for row in canceled:
                await services.control.command_finished(row["id"])
        log.info("gateway disabled", org_id=str(org_id), gateway_id=str(gateway_id))
        return gateway_out(await gateway_row(org_id, gateway_id))

    @post(
        "/{gateway_id:uuid}/rotate-key",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.FLEET),
    )
    async def rotate_key(
        self, org_id: OrgId, services: ServicesDep, gateway_id: FromPath[uuid.UUID]
    ) -> KeyRotated:
        """A new API key, shown once; the old one stops working at once."""
        await gateway_row(org_id, gateway_id)
        api_key = new_secret(GATEWAY_API_KEY)
        async with services.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE gateway_instances SET api_key_prefix = $3, api_key_hash = $4"
                " WHERE id = $1 AND org_id = $2",
                gateway_id,
                org_id,
                api_key.lookup_prefix,
                api_key.hash,
            )
            # Certificates were issued against the old key: the new key enrolls anew.
            await revoke_all(conn, gateway_id, "the API key was rotated")
            await record(conn, "gateway.rotate_key", "gateway", gateway_id, after={"api_key": ""})
        if services.control is not None:
            await services.control.gateway_revoked(gateway_id)
        log.info("gateway key rotated", org_id=str(org_id), gateway_id=str(gateway_id))
        return KeyRotated(id=gateway_id, api_key=api_key.value)

    @post(
        "/{gateway_id:uuid}/enable",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.FLEET),
    )
    async def enable_gateway(self, org_id: OrgId, gateway_id: FromPath[uuid.UUID]) -> GatewayOut:
        """Undo disable: the gateway's current API key works again (rotate it if it leaked)."""
        await gateway_row(org_id, gateway_id)
        async with GatewayInstance._meta.db.transaction():
            await GatewayInstance.update({GatewayInstance.disabled_at: None}).where(
                (GatewayInstance.id == gateway_id) & (GatewayInstance.org_id == org_id)
            )
            await record(None, "gateway.enable", "gateway", gateway_id, after={"disabled": False})
        log.info("gateway enabled", org_id=str(org_id), gateway_id=str(gateway_id))
        return gateway_out(await gateway_row(org_id, gateway_id))

    @delete(
        "/{gateway_id:uuid}", status_code=204, responses=ADMIN_ERRORS, opt=needs(Permission.FLEET)
    )
    async def delete_gateway(
        self, org_id: OrgId, services: ServicesDep, gateway_id: FromPath[uuid.UUID]
    ) -> None:
        """Delete the gateway with its devices, commands, agents and snapshots; its control
        channel closes. The logs it uploaded stay (they are records) until retention."""
        before = await gateway_row(org_id, gateway_id)
        async with GatewayInstance._meta.db.transaction():
            await GatewayInstance.delete().where(
                (GatewayInstance.id == gateway_id) & (GatewayInstance.org_id == org_id)
            )
            await record(
                None, "gateway.delete", "gateway", gateway_id, before={"name": before["name"]}
            )
        if services.control is not None:
            await services.control.gateway_revoked(gateway_id)
        log.info("gateway deleted", org_id=str(org_id), gateway_id=str(gateway_id))

    @post(
        "/{gateway_id:uuid}/rotate-enrollment-key",
        status_code=200,
        responses=ADMIN_ERRORS,
        opt=needs(Permission.FLEET),
    )
    async def rotate_enrollment_key(
        self, org_id: OrgId, services: ServicesDep, gateway_id: FromPath[uuid.UUID]
    ) -> EnrollmentKeyRotated:
        """A new enrollment key, shown once and pushed to the gateway (a fresh welcome);
        agents registering with the old one are refused once the gateway has it."""
        await gateway_row(org_id, gateway_id)
        enrollment_key = new_secret(ENROLLMENT_KEY)
        async with GatewayInstance._meta.db.transaction():
            await GatewayInstance.update(
                {
                    GatewayInstance.enrollment_key_encrypted: services.secrets.encrypt(
                        enrollment_key.value
                    )
                }
            ).where((GatewayInstance.id == gateway_id) & (GatewayInstance.org_id == org_id))
            await record(
                None,
                "gateway.rotate_enrollment_key",
                "gateway",
                gateway_id,
                after={"enrollment_key": ""},
            )
        if services.control is not None:
            await services.control.enrollment_key_rotated(gateway_id)
        log.info("gateway enrollment key rotated", org_id=str(org_id), gateway_id=str(gateway_id))
        return EnrollmentKeyRotated(id=gateway_id, enrollment_key=enrollment_key.value)

    @get("/{gateway_id:uuid}/snapshots", responses=ADMIN_ERRORS)
    async def list_snapshots(
        self,
        org_id: OrgId,
        gateway_id: FromPath[uuid.UUID],
        cursor: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT,
    ) -> SnapshotPage:
        """Status reports, newest first."""
        await gateway_row(org_id, gateway_id)
        query = GatewayStatusSnapshot.select().where(GatewayStatusSnapshot.gateway_id == gateway_id)
        if cursor is not None:
            query = query.where(GatewayStatusSnapshot.id < _snapshot_cursor(cursor))
        rows = (
            await query.order_by(GatewayStatusSnapshot.id, ascending=False)
            .limit(limit + 1)
            .output(load_json=True)
        )
        items = [
            SnapshotOut(id=r["id"], ts=r["ts"], received_at=r["received_at"], data=r["data"])
            for r in rows[:limit]
        ]
        return SnapshotPage(
            items=items, next_cursor=str(items[-1].id) if len(rows) > limit else None
        )


def _snapshot_cursor(cursor: str) -> int:
    try:
        position = int(cursor)
    except ValueError:
        raise InvalidRequest("cursor: pass next_cursor as given") from None
    if not 0 <= position <= INT64_MAX:
        raise InvalidRequest("cursor: pass next_cursor as given")
    return position
