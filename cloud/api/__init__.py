"""The hub's HTTP API (FastAPI), one app on Serve's HTTP proxy.

For operators (this package): health, metrics, ``/v1/traces`` (``traces``), the model registry
(``registry``), the routing status, the fleet (``fleet``: devices, settings, audit), the orchestrator
(``orchestrator``: proposals, intents, its audit log), and the fleet console (``console``, ``cloud.console``).
For devices and model clients: the Open Inference Protocol v2, whose routes live with the rest of the
device-facing ingress (``cloud.ingress.v2``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Optional

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.api.access import Operator, Permission, authorizer
from cloud.api.console import ConsoleAccess, console_routes
from cloud.api.fleet import FleetAccess, fleet_routes
from cloud.api.identities import MAX_ENROL_BODY, identity_routes
from cloud.api.orchestrator import orchestrator_routes
from cloud.api.registry import registry_routes
from cloud.api.rollouts import rollout_routes
from cloud.api.traces import trace_routes
from cloud.config import OperatorConfig, QuotaConfig, TenantConfig
from cloud.console import STATIC
from cloud.console.feed import FleetFeed
from cloud.ingress.body_limit import BodyLimit
from cloud.ingress.v2 import V2Service, v2_routes
from cloud.metrics import HubMetrics
from cloud.orchestrator.loop import Orchestrator
from cloud.registry import Registry
from cloud.security.enrolment import Identities
from cloud.traces.store import TraceStore

REFUSALS = {401: "unauthorized", 403: "forbidden", 429: "rate_limited"}  # counted in tandem_hub_http_refusals

OrchestratorAccess = tuple[Callable[[], Orchestrator], Callable[[], Optional[asyncio.AbstractEventLoop]]]
"""The orchestrator (a getter) and the event loop it runs on."""


def build_http_app(
    traces: TraceStore,
    registry: Registry,
    v2: Optional[V2Service] = None,
    hub_status: Optional[Callable[[], Awaitable[dict[str, Any]]]] = None,
    metrics: Optional[HubMetrics] = None,
    max_body_bytes: int = 4 * 1024 * 1024,
    max_artifact_bytes: int = 1024 * 1024 * 1024,
    fleet: Optional[FleetAccess] = None,
    orchestrator: Optional[OrchestratorAccess] = None,
    operators: Mapping[str, OperatorConfig] = MappingProxyType({}),
    identities: Optional[Callable[[], Identities]] = None,
    tenants: Mapping[str, TenantConfig] = MappingProxyType({}),
    quotas: Optional[QuotaConfig] = None,
    console: Optional[FleetFeed] = None,
    orchestrator_on: bool = True,
    https: bool = False,
) -> FastAPI:
    """``max_body_bytes`` bounds every request body (413 past it) but model uploads, bounded by max_artifact_bytes,
    and enrolments, bounded by MAX_ENROL_BODY. ``identities``: device enrolment and revocation (a secured hub).
    ``console``: the fleet console's feed, to serve the console under /console (it needs ``fleet``); ``https``: the
    hub serves HTTPS, so the console's cookie is marked Secure."""
    app = FastAPI(title="Tandem hub", version="1")

    def refused(reason: str) -> None:
        if metrics is not None:
            metrics.http_refusals.labels(reason=reason).inc()

    app.add_middleware(
        BodyLimit,
        max_bytes=max_body_bytes,
        by_prefix={"/v1/artifacts/": max_artifact_bytes, "/v1/enrol": MAX_ENROL_BODY},
        on_refused=lambda: refused("too_large"),
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        """A body or parameter that does not validate: FastAPI's own 422, counted."""
        refused("invalid")
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Every 401, 403 and 429 the routes raise (no token, outside the role or scope, past the rate), counted;
        the answer is FastAPI's own."""
        if exc.status_code in REFUSALS:
            refused(REFUSALS[exc.status_code])
        return await http_exception_handler(request, exc)

    require = authorizer(operators, tenants, quotas, metrics)
    reader = require(Permission.READ)
    app.include_router(registry_routes(registry, require, tenants))
    group_of = (lambda device_id: fleet.fleet().group_of(device_id)) if fleet is not None else (lambda _d: None)
    app.include_router(trace_routes(traces, require, group_of))
    if v2 is not None:
        app.include_router(v2_routes(v2))
    if fleet is not None:
        app.include_router(fleet_routes(fleet, require))
        app.include_router(rollout_routes(fleet, require))
    if orchestrator is not None:
        app.include_router(orchestrator_routes(orchestrator[0], require, orchestrator[1]))
    if identities is not None:
        app.include_router(identity_routes(identities, require))
    if console is not None and fleet is not None:
        orchestrator_of = orchestrator[0] if orchestrator is not None and orchestrator_on else None
        app.include_router(console_routes(ConsoleAccess(console, fleet, traces, orchestrator_of), require, https))
        app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus() -> Response:
        if metrics is None:
            raise HTTPException(404, "no metrics here")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/routing")
    async def routing(operator: Operator = Depends(reader)) -> dict[str, Any]:
        """The rules in use (their digest changes on every reload), the cache, and each replica's circuit."""
        if hub_status is None:
            raise HTTPException(404, "no routing status here")
        return await hub_status()

    return app
