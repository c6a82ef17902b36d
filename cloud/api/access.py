"""Who may do what through the admin API: bearer tokens (stored as their sha256), roles, and group scopes.

    viewer     read: devices, traces, models, routing, settings, the audit log, rollouts, the orchestrator
    operator   read, models (registry uploads and versions), settings, bundles, rollouts, orchestrator proposals
               and intents
    approver   read, approve / reject / revert orchestrator proposals
    admin      everything

An operator with ``groups`` sees only those groups' devices, and acts only on those groups: settings of one of
them (or of one of their devices), rollouts that target one of them, proposals that touch one of them; hub-wide
changes (scope ``all``, tags, the hub's models and bundles, replicas, routes) need an operator without groups. An
operator of a tenant sees only the tenant's devices (by id) and their traces, acts on its groups (theirs, if
narrower), and manages the tenant's own models and bundles (``cloud.api.registry``, ``cloud.api.rollouts``).
401 without a valid token, 403 outside the role or the scope, 429 past ``quotas.operator_requests_per_s`` (per
token, so one client cannot starve the rest). With no operators configured the API is open, as ``anonymous``
with every permission (the hub says so in its log).

The fleet console (``cloud.console``) sends the same token in a cookie (``tandem_console``: HttpOnly,
SameSite=Strict), set when an operator logs in, since a browser's EventSource cannot send a header. A request
carried by the cookie that changes something must also carry ``X-Tandem-Console`` (a custom header, which no
other site's page can add without the hub's consent), so a forged cross-site form cannot act for a logged-in
operator.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Optional

from fastapi import Header, HTTPException, Request

from cloud.config import OperatorConfig, QuotaConfig, Role, TenantConfig
from cloud.errors import Forbidden, QuotaExceeded, Unauthorized, http_status
from cloud.metrics import HubMetrics
from cloud.tenants import TokenBucket


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
    groups: tuple[str, ...] = ()  # empty: every group (of their tenant, if they have one)
    tenant: Optional[str] = None
    tenant_groups: tuple[str, ...] = ()  # the groups their tenant owns
    tenant_devices: tuple[str, ...] = ()  # globs on the ids of their tenant's devices

    @property
    def scoped(self) -> bool:
        """Whether this operator is limited to some groups or a tenant (else: everything, hub-wide changes too)."""
        return bool(self.groups) or self.tenant is not None

    @property
    def acts_on(self) -> tuple[str, ...]:
        return self.groups or self.tenant_groups

    def may_change(self, groups: Iterable[str]) -> bool:
        """Whether a change touching these groups (none: a hub-wide change) is within this operator's scope."""
        touched = set(groups)
        return not self.scoped or (bool(touched) and touched <= set(self.acts_on))

    def sees_group(self, group: Optional[str]) -> bool:
        """Whether this group's settings and rollouts are visible to this operator."""
        return not self.scoped or group in self.acts_on

    def sees_device(self, device_id: str, group: Optional[str]) -> bool:
        """Whether this device (in this group; None: never reported one) is visible to this operator."""
        if self.tenant is not None and not any(fnmatchcase(device_id, glob) for glob in self.tenant_devices):
            return False
        return not self.groups or group in self.groups

    def check_scope(self, groups: Iterable[str], what: str) -> None:
        """Forbidden (403) unless the change is within scope."""
        touched = sorted(set(groups))
        if not self.may_change(touched):
            where = f"groups {touched}" if touched else "the whole hub"
            raise _http(Forbidden(f"{self.name} acts on groups {list(self.acts_on)}; {what} touches {where}"))


ANONYMOUS = Operator("anonymous", Role.ADMIN)
CONSOLE_COOKIE = "tandem_console"  # the operator's token, for the console's pages and its event stream
CONSOLE_HEADER = "X-Tandem-Console"  # on every change the console makes (the cookie alone is refused)
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _http(error: Exception) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    if isinstance(error, QuotaExceeded):
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
    return HTTPException(http_status(error), str(error), headers=headers)


def authorizer(
    operators: Mapping[str, OperatorConfig],
    tenants: Mapping[str, TenantConfig] = MappingProxyType({}),
    quotas: Optional[QuotaConfig] = None,
    metrics: Optional[HubMetrics] = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Permission], Callable[..., Operator]]:
    """``require(permission)``: a FastAPI dependency that gives the operator behind the bearer token, or answers
    401 (no valid token), 403 (a role without the permission) or 429 (past the token's request rate)."""
    quotas = quotas or QuotaConfig()
    buckets = {name: TokenBucket(quotas.operator_requests_per_s, quotas.operator_requests_burst) for name in operators}
    lock = threading.Lock()  # FastAPI runs plain routes' dependencies on a thread pool

    def operator_named(name: str) -> Operator:
        entry = operators[name]
        tenant = tenants.get(entry.tenant) if entry.tenant is not None else None
        return Operator(
            name,
            entry.role,
            tuple(entry.groups),
            entry.tenant,
            tuple(tenant.groups) if tenant is not None else (),
            tuple(tenant.devices) if tenant is not None else (),
        )

    def within_rate(name: str) -> None:
        with lock:
            bucket = buckets[name]
            if bucket.take(clock()):
                return
            wait_s = bucket.wait_s()
        if metrics is not None:
            metrics.quota_refusals.labels(quota="operator_requests_per_s", tenant=operators[name].tenant or "").inc()
        raise _http(
            QuotaExceeded(
                f"{name} is over {quotas.operator_requests_per_s:g} requests/s", "operator_requests_per_s", wait_s
            )
        )

    def who(authorization: Optional[str]) -> Operator:
        if not operators:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and token:
            digest = token_sha256(token)
            found = [n for n, o in operators.items() if hmac.compare_digest(digest, o.token_sha256)]
            if found:
                within_rate(found[0])
                return operator_named(found[0])
        raise _http(Unauthorized("an operator's bearer token is required (Authorization: Bearer TOKEN)"))

    def require(permission: Permission) -> Callable[..., Operator]:
        def dependency(request: Request, authorization: Optional[str] = Header(None)) -> Operator:
            if authorization is None and CONSOLE_COOKIE in request.cookies:
                if request.method not in _SAFE_METHODS and CONSOLE_HEADER not in request.headers:
                    raise _http(Forbidden(f"a change made with the console's cookie needs the {CONSOLE_HEADER} header"))
                authorization = f"Bearer {request.cookies[CONSOLE_COOKIE]}"
            operator = who(authorization)
            if permission not in PERMISSIONS[operator.role]:
                raise _http(Forbidden(f"{operator.name} is {operator.role.value}: not allowed to {permission.value}"))
            return operator

        return dependency

    return require


Require = Callable[[Permission], Callable[..., Operator]]
"""``authorizer(operators)``: a permission -> the FastAPI dependency that checks it."""
