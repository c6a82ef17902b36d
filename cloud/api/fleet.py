"""``/v1/devices`` (the inventory) and ``/v1/admin/settings`` (desired state by scope), with the audit log.

Admin routes take ``Authorization: Bearer TOKEN``; who may do what is ``cloud.api.access``. The operator's name
goes into the audit log with every change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.api.access import Operator, Permission, Require
from cloud.errors import HubError, http_status
from cloud.fleet.bundles import BundleStore
from cloud.fleet.keys import KeyRing
from cloud.fleet.rollouts import RolloutService
from cloud.fleet.service import FleetService
from cloud.fleet.store import Scope
from protocol.bundle import BundleEnvelope


class SettingsChange(BaseModel):
    name: str = Field("", description="the group, tag or device id; empty for scope all")
    settings: dict[str, dict[str, Any]] = Field(
        description="sections (judge, escalation) of fields that override the devices' own; {} removes the scope's"
    )


@dataclass(frozen=True)
class FleetAccess:
    """What the fleet's routes reach (getters where the part exists only once the hub has started)."""

    fleet: Callable[[], FleetService]
    rollouts: Callable[[], RolloutService]
    bundles: BundleStore
    keys: Callable[[], KeyRing]
    bundle_for_devices: Callable[[str], BundleEnvelope]
    artifact_owners: Callable[[str], set[str]] = lambda _sha256: set()
    """the tenants whose registered model versions hold an artifact (a tenant may not bundle another's)"""


def fleet_routes(access: FleetAccess, require: Require) -> APIRouter:
    router = APIRouter()
    reader = require(Permission.READ)
    changer = require(Permission.SETTINGS)
    fleet = access.fleet

    @router.get("/v1/devices")
    def list_devices(
        group: Optional[str] = None,
        tag: Optional[str] = None,
        device_class: Optional[str] = None,
        status: Optional[str] = Query(None, pattern="^(online|silent|offline|unknown)$"),
        model: Optional[str] = None,
        operator: Operator = Depends(reader),
    ) -> list[dict[str, Any]]:
        """Every device the hub has heard from (an operator with groups: in their groups), filtered by group, tag,
        class, status and active model."""
        service = fleet()
        found = service.find(group=group, tag=tag, device_class=device_class, status=status, model=model)
        return [service.view(d) for d in found if operator.sees_device(d.device_id, d.group)]

    @router.get("/v1/devices/{device_id}")
    def get_device(device_id: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        service = fleet()
        try:
            device = service.device(device_id)
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc
        if not operator.sees_device(device.device_id, device.group):  # as unknown as a device that does not exist
            raise HTTPException(404, f"no device {device_id}")
        return service.view(device)

    def sees_layer(operator: Operator, scope: Scope, name: str) -> bool:
        """Scoped operators see the hub-wide layer (it reaches their devices), their groups' and devices' layers;
        tags cross groups and tenants, so theirs are for unscoped operators only."""
        if not operator.scoped or scope is Scope.ALL:
            return True
        if scope is Scope.GROUP:
            return operator.sees_group(name)
        if scope is Scope.DEVICE:
            return operator.sees_device(name, fleet().group_of(name))
        return False

    @router.get("/v1/admin/settings")
    def list_settings(operator: Operator = Depends(reader)) -> list[dict[str, Any]]:
        return [
            {"scope": s.scope.value, "name": s.name, "settings": s.settings, "updated_at": s.updated_at,
             "updated_by": s.updated_by}
            for s in fleet().store.layers()
            if sees_layer(operator, s.scope, s.name)
        ]  # fmt: skip

    @router.put("/v1/admin/settings/{scope}")
    def set_settings(scope: Scope, change: SettingsChange, operator: Operator = Depends(changer)) -> dict[str, Any]:
        """Replace one scope's settings; every device it covers gets a new desired version (published, retained)."""
        if scope is Scope.DEVICE and not operator.sees_device(change.name, fleet().group_of(change.name)):
            raise HTTPException(403, f"{operator.name} cannot change device {change.name}: not theirs")
        operator.check_scope(_scope_groups(fleet(), scope, change.name), f"settings for {scope.value} {change.name}")
        try:
            changed = fleet().set_settings(scope, change.name, change.settings, operator.name)
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc
        return {"scope": scope.value, "name": change.name, "devices": changed}

    @router.get("/v1/admin/audit")
    def audit(operator: Operator = Depends(reader), limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Admin changes, newest first, with who made them. A scoped operator sees the changes to what they see:
        their groups' and devices' settings, identities and rollouts."""
        entries = fleet().store.audit_log(limit if not operator.scoped else 1000)
        if operator.scoped:
            entries = [e for e in entries if _audit_visible(operator, e, fleet(), access.rollouts)][:limit]
        return entries

    return router


def _audit_visible(
    operator: Operator, entry: dict[str, Any], fleet: FleetService, rollouts: Callable[[], RolloutService]
) -> bool:
    """Whether a scoped operator may read an audit entry, by what it changed."""
    action, target = str(entry["action"]), str(entry["target"])
    if action == "settings":
        scope, _, name = target.partition(":")
        if scope == Scope.GROUP.value:
            return operator.sees_group(name)
        return scope == Scope.DEVICE.value and operator.sees_device(name, fleet.group_of(name))
    if action.startswith("rollout_"):
        groups = rollouts().groups(target)
        return bool(groups) and operator.may_change(groups)
    if action in ("enrolment_token", "enrolled", "revoked"):
        return operator.sees_device(target, fleet.group_of(target))
    return False


def _scope_groups(fleet: FleetService, scope: Scope, name: str) -> list[str]:
    """The device groups a settings scope reaches: its group, or its device's group; none for all and tags (which
    cross groups: hub-wide)."""
    if scope is Scope.GROUP:
        return [name]
    if scope is Scope.DEVICE:
        device = fleet.store.get(name)
        return [device.group] if device is not None and device.group else []
    return []
