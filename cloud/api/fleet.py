"""``/v1/devices`` (the inventory) and ``/v1/admin/settings`` (desired state by scope), with the audit log.

Admin routes take ``Authorization: Bearer TOKEN``, one token per operator (``fleet.operators``); the operator's
name goes into the audit log with every change. With no operators configured the admin API is open and changes
are recorded as ``anonymous`` (the hub says so in its log at start).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.errors import HubError, Unauthorized, http_status
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


def operator_auth(operators: Mapping[str, str]) -> Callable[..., str]:
    """A FastAPI dependency: the operator's name from the bearer token, or 401."""

    def who(authorization: Optional[str] = Header(None)) -> str:
        if not operators:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and token:
            for name, expected in operators.items():
                if hmac.compare_digest(token.encode(), expected.encode()):
                    return name
        error = Unauthorized("an operator's bearer token is required (Authorization: Bearer TOKEN)")
        raise HTTPException(http_status(error), str(error), headers={"WWW-Authenticate": "Bearer"})

    return who


@dataclass(frozen=True)
class FleetAccess:
    """What the fleet's routes reach (getters where the part exists only once the hub has started)."""

    fleet: Callable[[], FleetService]
    rollouts: Callable[[], RolloutService]
    bundles: BundleStore
    keys: Callable[[], KeyRing]
    bundle_for_devices: Callable[[str], BundleEnvelope]
    operators: Mapping[str, str]


def fleet_routes(access: FleetAccess) -> APIRouter:
    router = APIRouter()
    who = operator_auth(access.operators)
    fleet = access.fleet

    @router.get("/v1/devices")
    def list_devices(
        group: Optional[str] = None,
        tag: Optional[str] = None,
        device_class: Optional[str] = None,
        status: Optional[str] = Query(None, pattern="^(online|silent|offline|unknown)$"),
        model: Optional[str] = None,
    ) -> list[dict[str, Any]]:
        """Every device the hub has heard from, filtered by group, tag, class, status and active model."""
        service = fleet()
        found = service.find(group=group, tag=tag, device_class=device_class, status=status, model=model)
        return [service.view(d) for d in found]

    @router.get("/v1/devices/{device_id}")
    def get_device(device_id: str) -> dict[str, Any]:
        service = fleet()
        try:
            return service.view(service.device(device_id))
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc

    @router.get("/v1/admin/settings")
    def list_settings(operator: str = Depends(who)) -> list[dict[str, Any]]:
        return [
            {"scope": s.scope.value, "name": s.name, "settings": s.settings, "updated_at": s.updated_at,
             "updated_by": s.updated_by}
            for s in fleet().store.layers()
        ]  # fmt: skip

    @router.put("/v1/admin/settings/{scope}")
    def set_settings(scope: Scope, change: SettingsChange, operator: str = Depends(who)) -> dict[str, Any]:
        """Replace one scope's settings; every device it covers gets a new desired version (published, retained)."""
        try:
            changed = fleet().set_settings(scope, change.name, change.settings, operator)
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc
        return {"scope": scope.value, "name": change.name, "devices": changed}

    @router.get("/v1/admin/audit")
    def audit(limit: int = Query(100, ge=1, le=1000), operator: str = Depends(who)) -> list[dict[str, Any]]:
        """Admin changes, newest first, with who made them."""
        return fleet().store.audit_log(limit)

    return router
