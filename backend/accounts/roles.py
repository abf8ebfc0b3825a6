"""Roles and the permissions each grants: the one table every route's check reads.

`owner` > `admin` (fleet: gateways, devices, policies, agents; users) > `operator` (doors,
device and gateway commands); `hr` (employees, shifts, attendance, activity, the
organisation's time zone) stands beside them; `viewer` reads everything and changes nothing.
Every role reads. A route declares the one permission it needs with `needs(...)` in its
decorator's `opt`; routes that only read need `READ` and may leave it implied.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Permission(StrEnum):
    READ = "read"
    # Gateways, devices (adoption included), policies, agents.
    FLEET = "fleet"
    # Doors and device / gateway commands.
    COMMANDS = "commands"
    # Employees, shifts, attendance corrections, the organisation's time zone.
    PEOPLE = "people"
    # Users of the organisation (owners excepted) and their tokens.
    USERS = "users"
    # Owner-only: owners, the organisation's machine (admin) tokens.
    OWNERSHIP = "ownership"
    # A signed-in identity managing itself (its own personal tokens).
    SELF = "self"


ROLES = ("owner", "admin", "operator", "hr", "viewer")

ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "owner": frozenset(Permission),
    "admin": frozenset(
        {Permission.READ, Permission.SELF, Permission.FLEET, Permission.COMMANDS, Permission.USERS}
    ),
    "operator": frozenset({Permission.READ, Permission.SELF, Permission.COMMANDS}),
    "hr": frozenset({Permission.READ, Permission.SELF, Permission.PEOPLE}),
    "viewer": frozenset({Permission.READ, Permission.SELF}),
}

PERMISSION_KEY = "permission"


def needs(permission: Permission) -> dict[str, Any]:
    """The route's `opt`: what the caller's role must grant."""
    return {PERMISSION_KEY: permission}


def allows(role: str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def roles_with(permission: Permission) -> list[str]:
    return [role for role in ROLES if allows(role, permission)]


def refusal(permission: Permission) -> str:
    """The sentence a 403 carries: which roles may do this."""
    allowed = roles_with(permission)
    names = " or ".join(f"`{role}`" for role in allowed)
    return f"this needs the {names} role ({permission.value} permission)"
