"""The hub's HTTP API (FastAPI): health, traces, the model registry, the routing status, and the v2 protocol."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Optional, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud.errors import RegistryError, http_status
from cloud.ingress.body_limit import BodyLimit
from cloud.ingress.v2 import V2Service, v2_routes
from cloud.metrics import HubMetrics
from cloud.registry import ModelSpec, ModelStatus, ModelUpdate, Registry
from cloud.traces.store import HubTrace, TraceStatus, TraceStore
from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.errors import ProtocolError
from protocol.messages import validate_trace_id

T = TypeVar("T")


def build_http_app(
    traces: TraceStore,
    registry: Registry,
    v2: Optional[V2Service] = None,
    hub_status: Optional[Callable[[], Awaitable[dict[str, Any]]]] = None,
    metrics: Optional[HubMetrics] = None,
    max_body_bytes: int = 4 * 1024 * 1024,
    max_artifact_bytes: int = 1024 * 1024 * 1024,
) -> FastAPI:
    """``max_body_bytes`` bounds every request body (413 past it) but model uploads, bounded by max_artifact_bytes."""
    app = FastAPI(title="Tandem hub", version="1")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, by_prefix={"/v1/artifacts/": max_artifact_bytes})
    app.include_router(registry_routes(registry))
    if v2 is not None:
        app.include_router(v2_routes(v2))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus() -> Response:
        if metrics is None:
            raise HTTPException(404, "no metrics here")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/routing")
    async def routing() -> dict[str, Any]:
        """The rules in use (their digest changes on every reload), the cache, and each replica's circuit."""
        if hub_status is None:
            raise HTTPException(404, "no routing status here")
        return await hub_status()

    @app.get("/v1/traces")
    def list_traces(
        device_id: Optional[str] = None,
        status: Optional[TraceStatus] = None,
        route: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        acked: Optional[bool] = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        """Traces newest first, filtered by device, status, routing rule, received time (Unix seconds), and
        whether the device confirmed the result (acked=false: finished results still being sent)."""
        found = traces.query(device_id, status, route, since, until, acked, limit)
        return [_trace_json(t) for t in found]

    @app.get("/v1/traces/{trace_id}")
    def get_trace(trace_id: str) -> dict[str, Any]:
        """A trace's status and, once finished, its result (the EscalationResult as JSON)."""
        try:
            validate_trace_id(trace_id)
        except ProtocolError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc
        trace = traces.get(trace_id)
        if trace is None:
            raise HTTPException(404, f"no trace {trace_id}")
        return _trace_json(trace)

    return app


def _trace_json(trace: HubTrace) -> dict[str, Any]:
    """A trace and, once finished, its result: every model's output, the final answer, hops, cost."""
    return {
        "trace_id": trace.trace_id,
        "device_id": trace.device_id,
        "status": trace.status.value,
        "route": trace.route,
        "cost": trace.cost,
        "received_at": trace.received_at,
        "started_at": trace.started_at,
        "finished_at": trace.finished_at,
        "delivered_at": trace.delivered_at,
        "acked_at": trace.acked_at,
        "sends": trace.sends,
        "runs": trace.runs,
        "next_send_at": trace.next_send_at,
        "error": trace.error,
        "result": _result_json(trace.result),
    }


class Registration(ModelSpec):
    artifact_sha256: str


def registry_routes(registry: Registry) -> APIRouter:
    """``/v1/artifacts`` (content-addressed uploads) and ``/v1/models`` (versions and their status)."""
    router = APIRouter()

    def call(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RegistryError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc

    @router.put("/v1/artifacts/{sha256}", status_code=201)
    async def put_artifact(sha256: str, request: Request) -> dict[str, Any]:
        """Upload a model file as the raw body; the path names its sha256, which is checked."""
        body = await request.body()
        actual = hashlib.sha256(body).hexdigest()
        if actual != sha256:
            raise HTTPException(400, f"the body's sha256 is {actual}, not {sha256}")
        return {"sha256": call(lambda: registry.put_artifact(body)), "bytes": len(body)}

    @router.post("/v1/models", status_code=201)
    def register(body: Registration) -> dict[str, Any]:
        spec = ModelSpec.model_validate(body.model_dump(exclude={"artifact_sha256"}))
        return call(lambda: registry.register(spec, body.artifact_sha256)).model_dump(mode="json")

    @router.get("/v1/models")
    def query(
        name: Optional[str] = None,
        task: Optional[str] = None,
        tag: Optional[str] = None,
        precision: Optional[str] = None,
        status: Optional[ModelStatus] = None,
    ) -> list[dict[str, Any]]:
        found = call(lambda: registry.query(name=name, task=task, tag=tag, precision=precision, status=status))
        return [m.model_dump(mode="json") for m in found]

    @router.get("/v1/models/{name}/{version}")
    def get(name: str, version: str) -> dict[str, Any]:
        return call(lambda: registry.get(name, version)).model_dump(mode="json")

    @router.patch("/v1/models/{name}/{version}")
    def update(name: str, version: str, change: ModelUpdate) -> dict[str, Any]:
        return call(lambda: registry.update(name, version, change)).model_dump(mode="json")

    @router.post("/v1/models/{name}/{version}/retire")
    def retire(name: str, version: str) -> dict[str, Any]:
        return call(lambda: registry.retire(name, version)).model_dump(mode="json")

    return router


def _result_json(result: Optional[bytes]) -> Optional[dict[str, Any]]:
    if result is None:
        return None
    return json_format.MessageToDict(pb.EscalationResult.FromString(result))
