"""``/v1/traces``: what happened to each escalation, for operators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from google.protobuf import json_format

from cloud.api.access import Operator, Permission, Require, authorizer
from cloud.errors import http_status
from cloud.traces.store import HubTrace, TraceStatus, TraceStore
from protocol.codec import parse_result
from protocol.errors import ProtocolError
from protocol.messages import validate_trace_id


def trace_routes(
    traces: TraceStore,
    require: Optional[Require] = None,
    group_of: Callable[[str], Optional[str]] = lambda _device_id: None,
) -> APIRouter:
    """Reads, for operators with the read permission: a scoped operator's only of devices they see
    (``group_of``: a device's group, from the fleet's inventory)."""
    require = require or authorizer({})  # none given: open, as with no operators configured
    router = APIRouter()
    reader = require(Permission.READ)

    @router.get("/v1/traces")
    def list_traces(
        device_id: Optional[str] = None,
        status: Optional[TraceStatus] = None,
        route: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        acked: Optional[bool] = None,
        limit: int = Query(100, ge=1, le=1000),
        operator: Operator = Depends(reader),
    ) -> list[dict[str, Any]]:
        """Traces newest first, filtered by device, status, routing rule, received time (Unix seconds), and
        whether the device confirmed the result (acked=false: finished results still being sent)."""
        if not operator.scoped:
            return [_trace_json(t) for t in traces.query(device_id, status, route, since, until, acked, limit)]
        globs = operator.tenant_devices if operator.tenant is not None else None
        found = traces.query(device_id, status, route, since, until, acked, limit * 5, device_globs=globs)
        return [_trace_json(t) for t in found if operator.sees_device(t.device_id, group_of(t.device_id))][:limit]

    @router.get("/v1/traces/{trace_id}")
    def get_trace(trace_id: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        """A trace's status and, once finished, its result (the EscalationResult as JSON)."""
        try:
            validate_trace_id(trace_id)
        except ProtocolError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc
        trace = traces.get(trace_id)
        if trace is None or not operator.sees_device(trace.device_id, group_of(trace.device_id)):
            raise HTTPException(404, f"no trace {trace_id}")
        return _trace_json(trace)

    return router


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


def _result_json(result: Optional[bytes]) -> Optional[dict[str, Any]]:
    if result is None:
        return None
    return json_format.MessageToDict(parse_result(result))
