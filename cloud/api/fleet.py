"""``/v1/devices`` (the inventory) and ``/v1/admin/settings`` (desired state by scope), with the audit log.

Admin routes take ``Authorization: Bearer TOKEN``; who may do what is ``cloud.api.access``. The operator's name
goes into the audit log with every change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.api.access import Operator, Permission, authorizer
from cloud.config import OperatorConfig
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
    operators: Mapping[str, OperatorConfig]


def fleet_routes(access: FleetAccess) -> APIRouter:
    router = APIRouter()
    require = authorizer(access.operators)
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
        return [service.view(d) for d in found if operator.may_see(d.group)]

    @router.get("/v1/devices/{device_id}")
    def get_device(device_id: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        service = fleet()
        try:
            device = service.device(device_id)
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc
        if not operator.may_see(device.group):  # as unknown as a device that does not exist
            raise HTTPException(404, f"no device {device_id}")
        return service.view(device)

    @router.get("/v1/admin/settings")
    def list_settings(operator: Operator = Depends(reader)) -> list[dict[str, Any]]:
        return [
            {"scope": s.scope.value, "name": s.name, "settings": s.settings, "updated_at": s.updated_at,
             "updated_by": s.updated_by}
            for s in fleet().store.layers()
        ]  # fmt: skip

    @router.put("/v1/admin/settings/{scope}")
    def set_settings(scope: Scope, change: SettingsChange, operator: Operator = Depends(changer)) -> dict[str, Any]:
        """Replace one scope's settings; every device it covers gets a new desired version (published, retained)."""
        operator.check_scope(_scope_groups(fleet(), scope, change.name), f"settings for {scope.value} {change.name}")
        try:
            changed = fleet().set_settings(scope, change.name, change.settings, operator.name)
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc
        return {"scope": scope.value, "name": change.name, "devices": changed}

    @router.get("/v1/admin/audit")
    def audit(operator: Operator = Depends(reader), limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Admin changes, newest first, with who made them."""
        return fleet().store.audit_log(limit)

    return router


def _scope_groups(fleet: FleetService, scope: Scope, name: str) -> list[str]:
    """The device groups a settings scope reaches: its group, or its device's group; none for all and tags (which
    cross groups: hub-wide)."""
    if scope is Scope.GROUP:
        return [name]
    if scope is Scope.DEVICE:
        device = fleet.store.get(name)
        return [device.group] if device is not None and device.group else []
    return []
