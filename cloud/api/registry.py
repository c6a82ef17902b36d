"""``/v1/artifacts`` and ``/v1/models``: the model registry, for operators and ``tandem hub models``.

A model version belongs to the hub (``owner`` empty) or to a tenant. A tenant's operators register versions
that belong to their tenant, see the hub's models and their tenant's, and change only their tenant's; a name
belongs to one owner. Their tenant's ``max_model_bytes`` bounds the model files its versions hold (413 past
it). Operators scoped by groups alone make no registry change (hub-wide).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Optional, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request

from cloud.api.access import Operator, Permission, Require, authorizer
from cloud.config import TenantConfig
from cloud.errors import RegistryError, StorageQuotaExceeded, http_status
from cloud.registry import ModelSpec, ModelStatus, ModelUpdate, ModelVersion, Registry

T = TypeVar("T")


class Registration(ModelSpec):
    artifact_sha256: str


def registry_routes(
    registry: Registry, require: Optional[Require] = None, tenants: Mapping[str, TenantConfig] = MappingProxyType({})
) -> APIRouter:
    """``/v1/artifacts`` (content-addressed uploads) and ``/v1/models`` (versions and their status): reads need
    the read permission, changes the models permission (an operator without groups, or a tenant's)."""
    require = require or authorizer({})  # none given: open, as with no operators configured
    router = APIRouter()
    reader, writer = require(Permission.READ), require(Permission.MODELS)

    def hub_wide(operator: Operator = Depends(writer)) -> Operator:
        if operator.tenant is None:
            operator.check_scope([], "the model registry")
        return operator

    def sees(operator: Operator, model: ModelVersion) -> bool:
        return operator.tenant is None or model.owner in ("", operator.tenant)

    def owned(operator: Operator, name: str, version: str) -> ModelVersion:
        """The version, if this operator may change it: 404 if they cannot see it, 403 if it is the hub's."""
        model = call(lambda: registry.get(name, version))
        if not sees(operator, model):
            raise HTTPException(404, f"no model {name} {version}")
        if operator.tenant is not None and model.owner != operator.tenant:
            raise HTTPException(403, f"{operator.name} may not change the hub's model {name}")
        return model

    def within_quota(tenant: str, sha256: str, size: int) -> None:
        limit = tenants[tenant].max_model_bytes if tenant in tenants else None
        if limit is None:
            return
        held = {m.artifact_sha256: m.artifact_bytes for m in registry.query() if m.owner == tenant}
        total = sum(held.values()) + (0 if sha256 in held else size)
        if total > limit:
            raise HTTPException(
                http_status(StorageQuotaExceeded("")),
                f"tenant {tenant}'s models would hold {total} bytes; its quota (max_model_bytes) is {limit}",
            )

    def call(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RegistryError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc

    @router.put("/v1/artifacts/{sha256}", status_code=201)
    async def put_artifact(sha256: str, request: Request, operator: Operator = Depends(hub_wide)) -> dict[str, Any]:
        """Upload a model file as the raw body; the path names its sha256, which is checked."""
        body = await request.body()
        actual = hashlib.sha256(body).hexdigest()
        if actual != sha256:
            raise HTTPException(400, f"the body's sha256 is {actual}, not {sha256}")
        if operator.tenant is not None:
            within_quota(operator.tenant, sha256, len(body))
        return {"sha256": call(lambda: registry.put_artifact(body)), "bytes": len(body)}

    @router.post("/v1/models", status_code=201)
    def register(body: Registration, operator: Operator = Depends(hub_wide)) -> dict[str, Any]:
        owner = operator.tenant if operator.tenant is not None else body.owner
        if owner and owner not in tenants:
            raise HTTPException(400, f"owner {owner!r} is no tenant of this hub")
        others = {m.owner for m in call(lambda: registry.query(name=body.name))} - {owner}
        if others:
            raise HTTPException(403, f"the model name {body.name} belongs to another owner")
        spec = ModelSpec.model_validate({**body.model_dump(exclude={"artifact_sha256"}), "owner": owner})
        if owner:
            size = call(lambda: registry.artifact_size(body.artifact_sha256))
            within_quota(owner, body.artifact_sha256, size)
        return call(lambda: registry.register(spec, body.artifact_sha256)).model_dump(mode="json")

    @router.get("/v1/models")
    def query(
        name: Optional[str] = None,
        task: Optional[str] = None,
        tag: Optional[str] = None,
        precision: Optional[str] = None,
        status: Optional[ModelStatus] = None,
        operator: Operator = Depends(reader),
    ) -> list[dict[str, Any]]:
        found = call(lambda: registry.query(name=name, task=task, tag=tag, precision=precision, status=status))
        return [m.model_dump(mode="json") for m in found if sees(operator, m)]

    @router.get("/v1/models/{name}/{version}")
    def get(name: str, version: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        model = call(lambda: registry.get(name, version))
        if not sees(operator, model):
            raise HTTPException(404, f"no model {name} {version}")
        return model.model_dump(mode="json")

    @router.patch("/v1/models/{name}/{version}")
    def update(name: str, version: str, change: ModelUpdate, operator: Operator = Depends(hub_wide)) -> dict[str, Any]:
        owned(operator, name, version)
        return call(lambda: registry.update(name, version, change)).model_dump(mode="json")

    @router.post("/v1/models/{name}/{version}/retire")
    def retire(name: str, version: str, operator: Operator = Depends(hub_wide)) -> dict[str, Any]:
        owned(operator, name, version)
        return call(lambda: registry.retire(name, version)).model_dump(mode="json")

    return router
