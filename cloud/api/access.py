"""Who may do what through the admin API: bearer tokens (stored as their sha256), roles, and group scopes.

    viewer     read: devices, traces, models, routing, settings, the audit log, rollouts, the orchestrator
    operator   read, models (registry uploads and versions), settings, bundles, rollouts, orchestrator proposals
               and intents
    approver   read, approve / reject / revert orchestrator proposals
    admin      everything

An operator with ``groups`` sees only those groups' devices, and acts only on those groups: settings of one of
them (or of one of their devices), rollouts that target one of them, proposals that touch one of them; hub-wide
changes (scope ``all``, tags, models, bundles, replicas, routes) need an operator without groups. 401 without a
valid token, 403 outside the role or the scope. With no operators configured the API is open, as ``anonymous``
with every permission (the hub says so in its log).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

from fastapi import Header, HTTPException

from cloud.config import OperatorConfig, Role
from cloud.errors import Forbidden, Unauthorized, http_status


class Permission(str, enum.Enum):
    READ = "read"
    MODELS = "models"
    SETTINGS = "settings"
    BUNDLES = "bundles"
    ROLLOUTS = "rollouts"
    PROPOSE = "propose"
    APPROVE = "approve"
    DEVICES = "devices"  # enrolment tokens and revocations (device identities): admin only


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset(
        {
            Permission.READ,
            Permission.MODELS,
            Permission.SETTINGS,
            Permission.BUNDLES,
            Permission.ROLLOUTS,
            Permission.PROPOSE,
        }
    ),
    Role.APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    Role.ADMIN: frozenset(Permission),
}


@dataclass(frozen=True)
class Operator:
    name: str
    role: Role
    groups: tuple[str, ...] = ()  # empty: every group, and hub-wide changes

    def may_change(self, groups: Iterable[str]) -> bool:
        """Whether a change touching these groups (none: a hub-wide change) is within this operator's scope."""
        touched = set(groups)
        return not self.groups or (bool(touched) and touched <= set(self.groups))

    def may_see(self, group: str) -> bool:
        """Whether a device of this group is visible to this operator."""
        return not self.groups or group in self.groups

    def check_scope(self, groups: Iterable[str], what: str) -> None:
        """Forbidden (403) unless the change is within scope."""
        touched = sorted(set(groups))
        if not self.may_change(touched):
            where = f"groups {touched}" if touched else "the whole hub"
            raise _http(Forbidden(f"{self.name} acts on groups {list(self.groups)}; {what} touches {where}"))


ANONYMOUS = Operator("anonymous", Role.ADMIN)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _http(error: Exception) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    return HTTPException(http_status(error), str(error), headers=headers)


def authorizer(operators: Mapping[str, OperatorConfig]) -> Callable[[Permission], Callable[..., Operator]]:
    """``require(permission)``: a FastAPI dependency that gives the operator behind the bearer token, or answers
    401 (no valid token) or 403 (a role without the permission)."""

    def who(authorization: Optional[str]) -> Operator:
        if not operators:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and token:
            digest = token_sha256(token)
            found = [n for n, o in operators.items() if hmac.compare_digest(digest, o.token_sha256)]
            if found:
                entry = operators[found[0]]
                return Operator(found[0], entry.role, tuple(entry.groups))
        raise _http(Unauthorized("an operator's bearer token is required (Authorization: Bearer TOKEN)"))

    def require(permission: Permission) -> Callable[..., Operator]:
        def dependency(authorization: Optional[str] = Header(None)) -> Operator:
            operator = who(authorization)
            if permission not in PERMISSIONS[operator.role]:
                raise _http(Forbidden(f"{operator.name} is {operator.role.value}: not allowed to {permission.value}"))
            return operator

        return dependency

    return require


Require = Callable[[Permission], Callable[..., Operator]]
"""``authorizer(operators)``: a permission -> the FastAPI dependency that checks it."""
