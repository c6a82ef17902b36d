"""``/v1/artifacts`` and ``/v1/models``: the model registry, for operators and ``tandem hub models``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Optional, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request

from cloud.api.access import Operator, Permission, Require, authorizer
from cloud.errors import RegistryError, http_status
from cloud.registry import ModelSpec, ModelStatus, ModelUpdate, Registry

T = TypeVar("T")


class Registration(ModelSpec):
    artifact_sha256: str


def registry_routes(registry: Registry, require: Optional[Require] = None) -> APIRouter:
    """``/v1/artifacts`` (content-addressed uploads) and ``/v1/models`` (versions and their status): reads need
    the read permission, changes the models permission (hub-wide: an operator without groups)."""
    require = require or authorizer({})  # none given: open, as with no operators configured
    router = APIRouter()
    reader, writer = require(Permission.READ), require(Permission.MODELS)

    def hub_wide(operator: Operator = Depends(writer)) -> Operator:
        operator.check_scope([], "the model registry")
        return operator

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
        return {"sha256": call(lambda: registry.put_artifact(body)), "bytes": len(body)}

    @router.post("/v1/models", status_code=201)
    def register(body: Registration, operator: Operator = Depends(hub_wide)) -> dict[str, Any]:
        spec = ModelSpec.model_validate(body.model_dump(exclude={"artifact_sha256"}))
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
        return [m.model_dump(mode="json") for m in found]

    @router.get("/v1/models/{name}/{version}")
    def get(name: str, version: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        return call(lambda: registry.get(name, version)).model_dump(mode="json")

    @router.patch("/v1/models/{name}/{version}")
    def update(name: str, version: str, change: ModelUpdate, operator: Operator = Depends(hub_wide)) -> dict[str, Any]:
        return call(lambda: registry.update(name, version, change)).model_dump(mode="json")

    @router.post("/v1/models/{name}/{version}/retire")
    def retire(name: str, version: str, operator: Operator = Depends(hub_wide)) -> dict[str, Any]:
        return call(lambda: registry.retire(name, version)).model_dump(mode="json")

    return router
