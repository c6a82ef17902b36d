"""The hub's HTTP API (FastAPI): trace look-ups and health."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from google.protobuf import json_format

from cloud.errors import http_status
from cloud.traces.store import TraceStore
from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.errors import ProtocolError
from protocol.messages import validate_trace_id


def build_http_app(traces: TraceStore) -> FastAPI:
    app = FastAPI(title="Tandem hub", version="1")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

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
        return {
            "trace_id": trace.trace_id,
            "device_id": trace.device_id,
            "status": trace.status.value,
            "received_at": trace.received_at,
            "started_at": trace.started_at,
            "finished_at": trace.finished_at,
            "delivered_at": trace.delivered_at,
            "error": trace.error,
            "result": _result_json(trace.result),
        }

    return app


def _result_json(result: Optional[bytes]) -> Optional[dict[str, Any]]:
    if result is None:
        return None
    return json_format.MessageToDict(pb.EscalationResult.FromString(result))
