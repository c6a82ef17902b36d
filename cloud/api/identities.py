"""Device identities over HTTP: enrolment tokens and revocations (admin), and enrolment itself (devices).

Tokens and revocations need the ``devices`` permission (admin): any device for an unscoped admin, the
tenant's devices for a tenant's admin. ``POST /v1/enrol`` takes no bearer token: the one-time enrolment
token in its body is the credential, and the answer (a certificate and the CA's) holds nothing secret.
Its body is capped (``MAX_ENROL_BODY``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cloud.api.access import Operator, Permission, Require
from cloud.errors import HubError, http_status
from cloud.security.enrolment import MAX_CSR_BYTES, Identities
from protocol.topics import DeviceId

MAX_TOKEN_TTL_S = 7 * 86400.0
MAX_ENROL_BODY = 64 * 1024  # a CSR and a token, as JSON


class TokenRequest(BaseModel):
    device_id: DeviceId = Field(description="the device the token enrols: its certificate's CN")
    ttl_s: Optional[float] = Field(
        None, gt=0, le=MAX_TOKEN_TTL_S, description="lifetime; default security.enrolment_ttl_s"
    )


class EnrolRequest(BaseModel):
    token: str = Field(max_length=256, description="the one-time token an operator was given")
    csr_pem: str = Field(max_length=MAX_CSR_BYTES, description="the device's certificate signing request (PEM)")


def identity_routes(identities: Callable[[], Identities], require: Require) -> APIRouter:
    router = APIRouter()
    admin = require(Permission.DEVICES)

    async def call(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc

    @router.post("/v1/admin/enrolments")
    async def new_token(body: TokenRequest, operator: Operator = Depends(admin)) -> dict[str, Any]:
        _own_device(operator, body.device_id, "enrol")
        token = await call(identities().token, body.device_id, operator.name, body.ttl_s)
        return {"device_id": body.device_id, "token": token}

    @router.post("/v1/enrol")
    async def enrol(body: EnrolRequest) -> dict[str, Any]:
        enrolled = await call(identities().enrol, body.token, body.csr_pem.encode())
        return {
            "device_id": enrolled.device_id,
            "certificate_pem": enrolled.certificate_pem.decode(),
            "ca_pem": enrolled.ca_pem.decode(),
        }

    @router.post("/v1/admin/devices/{device_id}/revoke")
    async def revoke(device_id: str, operator: Operator = Depends(admin)) -> dict[str, Any]:
        _own_device(operator, device_id, "revoke")
        serials = await call(identities().revoke, device_id, operator.name)
        return {"device_id": device_id, "revoked": [f"{serial:x}" for serial in serials]}

    return router


def _own_device(operator: Operator, device_id: str, what: str) -> None:
    """An unscoped admin enrols and revokes any device; a tenant's admin those whose ids are the tenant's (a
    device's group is its own claim, so an operator scoped by groups does neither)."""
    if not operator.scoped:
        return
    if operator.tenant is not None and not operator.groups and operator.sees_device(device_id, None):
        return
    raise HTTPException(403, f"{operator.name} may not {what} {device_id}: not a device of theirs")
