"""``/v1/bundles`` (signed model bundles; their files, with Range, for devices) and ``/v1/admin/rollouts``."""

from __future__ import annotations

import time
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from cloud.api.access import Operator, Permission, Require
from cloud.api.fleet import FleetAccess
from cloud.errors import HubError, http_status
from cloud.fleet.bundles import BundleRequest
from cloud.fleet.rollout_spec import RolloutSpec
from protocol.bundle import ModelSection

DAY_S = 86400.0


class BundleFile(BaseModel):
    sha256: str = Field(description="an artifact uploaded with PUT /v1/artifacts/{sha256}")
    role: str = Field(description="model, engine, labels or golden")


class NewBundle(BaseModel):
    name: str
    version: str
    model: ModelSection
    files: dict[str, BundleFile]
    device_classes: list[str] = ["*"]
    devices: list[str] = []
    judge: dict[str, Any] = {}
    expires_in_days: float = Field(30.0, gt=0)
    release: Optional[int] = Field(None, ge=1, description="default: one above the highest of this name")


def rollout_routes(access: FleetAccess, require: Require) -> APIRouter:
    router = APIRouter()
    reader = require(Permission.READ)
    bundler = require(Permission.BUNDLES)
    rolls_out = require(Permission.ROLLOUTS)

    def call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc

    def sees(operator: Operator, bundle_id: str) -> bool:
        return operator.tenant is None or call(access.bundles.owner, bundle_id) in ("", operator.tenant)

    @router.post("/v1/admin/bundles", status_code=201)
    def create_bundle(body: NewBundle, operator: Operator = Depends(bundler)) -> dict[str, Any]:
        """Sign a bundle of uploaded artifacts with the hub's targets key: the hub's (an operator without groups or
        tenant), or a tenant's, of artifacts no other tenant's models hold."""
        owner = operator.tenant or ""
        if operator.tenant is None:
            operator.check_scope([], "a bundle")
        if access.bundles.owners(body.name) - {owner}:
            raise HTTPException(403, f"the bundle name {body.name} belongs to another owner")
        for name, entry in body.files.items():
            if access.artifact_owners(entry.sha256) - {owner}:
                raise HTTPException(403, f"{name}: the artifact is another tenant's model")
        request = BundleRequest(
            name=body.name,
            version=body.version,
            model=body.model,
            files={name: (f.sha256, f.role) for name, f in body.files.items()},
            device_classes=body.device_classes,
            devices=body.devices,
            judge=body.judge,
            expires_in_s=body.expires_in_days * DAY_S,
            release=body.release,
            owner=owner,
        )
        envelope = call(lambda: access.bundles.create(request, access.keys()))
        bundle_id = f"{envelope.manifest.signed['name']}-{envelope.manifest.signed['release']}"
        access.fleet().store.audit(time.time(), operator.name, "bundle_create", bundle_id, {"version": body.version})
        return call(access.bundles.summary, bundle_id)

    @router.get("/v1/bundles")
    def list_bundles(operator: Operator = Depends(reader)) -> list[dict[str, Any]]:
        """The bundles this operator sees: the hub's, and their tenant's."""
        ids = [f"{m.name}-{m.release}" for m in access.bundles.manifests()]
        return [access.bundles.summary(i) for i in ids if sees(operator, i)]

    @router.get("/v1/bundles/{bundle_id}")
    def get_bundle(bundle_id: str) -> dict[str, Any]:
        """The signed envelope, as devices get it."""
        return call(access.bundle_for_devices, bundle_id).model_dump()

    @router.get("/v1/bundles/{bundle_id}/files/{name}")
    def bundle_file(bundle_id: str, name: str) -> FileResponse:
        """One file of a bundle; honours Range, so a device resumes a cut download."""
        return FileResponse(call(access.bundles.file, bundle_id, name), media_type="application/octet-stream")

    @router.post("/v1/admin/rollouts", status_code=201)
    def start_rollout(spec: RolloutSpec, operator: Operator = Depends(rolls_out)) -> dict[str, Any]:
        operator.check_scope(access.rollouts().reach(spec.target), "this rollout")
        call(access.bundles.get, spec.bundle_id)
        if not sees(operator, spec.bundle_id):  # another tenant's bundle: as unknown as one that does not exist
            raise HTTPException(404, f"no bundle {spec.bundle_id}")
        rollout = call(access.rollouts().start, spec, operator.name)
        return access.rollouts().status(rollout.rollout_id)

    def visible(operator: Operator, rollout_id: str) -> bool:
        """A scoped operator sees the rollouts whose devices are all in their groups."""
        return not operator.scoped or operator.may_change(access.rollouts().groups(rollout_id))

    @router.get("/v1/admin/rollouts")
    def list_rollouts(operator: Operator = Depends(reader)) -> list[dict[str, Any]]:
        return [r for r in access.rollouts().summaries() if visible(operator, r["rollout_id"])]

    @router.get("/v1/admin/rollouts/{rollout_id}")
    def rollout_status(rollout_id: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        """Its state, wave, each abort rule's current value, every device's status, and the timeline."""
        status = call(access.rollouts().status, rollout_id)
        if not visible(operator, rollout_id):  # as unknown as one that does not exist
            raise HTTPException(404, f"no rollout {rollout_id}")
        return status

    @router.post("/v1/admin/rollouts/{rollout_id}/{action}")
    def act(rollout_id: str, action: str, operator: Operator = Depends(rolls_out)) -> dict[str, Any]:
        actions = {
            "pause": access.rollouts().pause,
            "resume": access.rollouts().resume,
            "abort": access.rollouts().abort,
            "rollback": access.rollouts().rollback,
        }
        if action not in actions:
            raise HTTPException(404, f"no action {action!r}; one of {sorted(actions)}")
        call(access.rollouts().status, rollout_id)  # 404 before 403: an unknown rollout is unknown to everyone
        operator.check_scope(access.rollouts().groups(rollout_id), f"rollout {rollout_id}")
        call(actions[action], rollout_id, operator.name)
        return access.rollouts().status(rollout_id)

    return router
