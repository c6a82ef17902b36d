"""The console's routes: its page and files, logging in and out, the reads its pages need beyond the admin API,
and the event stream that keeps an open page live.

    GET  /console/                    the page (one HTML file; console.js draws each view)
    GET  /console/static/...          console.js, console.css (files of this package: nothing from the internet)
    POST /console/login  {token}      checks the token, sets the tandem_console cookie; POST /console/logout
    GET  /console/api/me              who is logged in, their role and what it may do
    GET  /console/api/fleet           one row per device (cloud.console.feed)
    GET  /console/api/devices/{id}    a device: inventory, heartbeats, model history, recent escalations
    GET  /console/api/traces/{id}     a trace with its request: the device's prediction, the image's size
    GET  /console/api/traces/{id}/image   the escalated image, as the device sent it
    GET  /console/api/hard-examples   frames the cloud labelled otherwise; POST .../{id} {label} to label one
    GET  /console/api/hard-examples/export   the labelled ones as a zip: images/<label>/<trace_id>.<ext>, labels.csv
    GET  /console/api/alerts          raised and recently cleared alerts
    GET  /console/events              server-sent events: fleet (changed rows), rollouts, alerts, proposals

Every read and change is checked as the admin API checks it (``cloud.api.access``): the same roles, groups and
tenants. Rollout and proposal buttons call the admin API itself (``/v1/admin/...``), so an action taken on the
console is recorded in the audit log under the operator who clicked.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator

from cloud.api.access import CONSOLE_COOKIE, PERMISSIONS, Operator, Permission, Require
from cloud.api.fleet import FleetAccess
from cloud.console import STATIC
from cloud.console.feed import FleetFeed
from cloud.errors import HubError
from cloud.fleet.rollout_spec import RolloutState
from cloud.fleet.rollouts import RolloutService
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.store import ProposalState
from cloud.traces.store import HardExample, HubTrace, TraceStore
from protocol.codec import decode_request, decode_result
from protocol.errors import ProtocolError
from protocol.messages import EncodedImage, Prediction, validate_trace_id

EVENT_EVERY_S = 1.0  # how often an event stream looks for changes (the browser is told only of changes)
KEEPALIVE_S = 15.0  # a comment line this often, so proxies do not close a quiet stream
IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/bmp": "bmp"}
COOKIE_MAX_AGE_S = 12 * 3600


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


class Label(BaseModel):
    label: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\x00-\x1f]+$")

    @field_validator("label")
    @classmethod
    def _a_folder_name(cls, value: str) -> str:
        """It names a folder in the exported dataset: not . or .., not blank."""
        value = value.strip()
        if value in ("", ".", ".."):
            raise ValueError("a label names a folder of the dataset: not blank, . or ..")
        return value


@dataclass(frozen=True)
class ConsoleAccess:
    feed: FleetFeed
    fleet: FleetAccess
    traces: TraceStore
    orchestrator: Optional[Callable[[], Orchestrator]] = None


def _prediction(p: Prediction) -> dict[str, Any]:
    return {
        "model": f"{p.model_id}:{p.model_version}" if p.model_version else p.model_id,
        "label": p.label,
        "confidence": round(p.confidence, 4),
        "boxes": [asdict(b) for b in p.boxes],
        "texts": [asdict(t) for t in p.texts],
    }


def console_routes(access: ConsoleAccess, require: Require, secure_cookie: bool = False) -> APIRouter:
    router = APIRouter()
    reader = require(Permission.READ)
    labeller = require(Permission.MODELS)
    fleet = access.fleet.fleet

    def visible(operator: Operator, device_id: str) -> bool:
        return operator.sees_device(device_id, fleet().group_of(device_id))

    @router.get("/console", include_in_schema=False)
    def to_console() -> RedirectResponse:
        return RedirectResponse("/console/")

    @router.get("/console/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @router.post("/console/login")
    def login(body: Login, request: Request, response: Response) -> dict[str, Any]:
        """A valid token (any role: every role reads) becomes the page's cookie."""
        operator = reader(request, f"Bearer {body.token}")
        response.set_cookie(  # Secure on a hub that serves HTTPS (a secured hub): never sent in plain text
            CONSOLE_COOKIE,
            body.token,
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
            path="/",
        )
        return _me(operator)

    @router.post("/console/logout")
    def logout(response: Response) -> dict[str, str]:
        response.delete_cookie(CONSOLE_COOKIE, path="/")
        return {"status": "logged out"}

    @router.get("/console/api/me")
    def me(operator: Operator = Depends(reader)) -> dict[str, Any]:
        return _me(operator)

    @router.get("/console/api/fleet")
    def fleet_rows(operator: Operator = Depends(reader)) -> dict[str, Any]:
        rows = access.feed.rows()
        return {"now": time.time(), "rows": [r for r in rows if operator.sees_device(r["device_id"], r["group"])]}

    @router.get("/console/api/devices/{device_id}")
    def device_page(device_id: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        device = access.feed.device(device_id)
        if device is None or not operator.sees_device(device.device_id, device.group):
            raise HTTPException(404, f"no device {device_id}")
        service = fleet()
        store = access.fleet.rollouts().store
        models = []
        for row in store.rows_of_device(device_id):
            rollout = store.get(row.rollout_id)
            models.append(
                {"rollout_id": row.rollout_id, "bundle_id": rollout.spec["bundle_id"] if rollout else "",
                 "from_bundle": row.from_bundle, "state": row.state, "reason": row.reason, "at": row.updated_at}
            )  # fmt: skip
        recent = [_trace_row(access.traces, t) for t in access.traces.query(device_id=device_id, limit=20)]
        return {
            "now": time.time(),
            "device": service.view(device),
            "row": next((r for r in access.feed.rows() if r["device_id"] == device_id), None),
            "history": access.feed.history(device_id),
            "models": models,
            "escalations": recent,
        }

    @router.get("/console/api/traces/{trace_id}")
    def trace_page(trace_id: str, operator: Operator = Depends(reader)) -> dict[str, Any]:
        """A trace as one page shows it: the device's answer and its image, each model's answer, hops, cost."""
        trace, device_id = _visible_trace(trace_id, operator)
        found: dict[str, Any] = {"trace_id": trace_id, "device_id": device_id, "request": None, "result": None}
        if trace is not None:
            found.update(
                status=trace.status.value, route=trace.route, cost=trace.cost, error=trace.error, sends=trace.sends,
                runs=trace.runs, received_at=trace.received_at, finished_at=trace.finished_at,
                acked_at=trace.acked_at,
            )  # fmt: skip
            if trace.result is not None:
                try:
                    result = decode_result(trace.result)
                except ProtocolError as exc:
                    found["error"] = f"the stored result does not decode: {exc}"
                else:
                    found["result"] = {
                        "final": _prediction(result.final) if result.final else None,
                        "outputs": [_prediction(p) for p in result.outputs],
                        "timings": [{"hop": t.hop, "ms": round(t.ms, 2)} for t in result.timings],
                    }
        request = _request(access.traces, trace_id)
        if request is not None:
            image = request.input if isinstance(request.input, EncodedImage) else None
            found["request"] = {
                "local": _prediction(request.local_prediction),
                "attributes": dict(request.attributes),
                "deadline_ms": request.deadline_ms,
                "image": {"media_type": image.media_type, "width": image.width, "height": image.height,
                          "bytes": len(image.data)} if image else None,
            }  # fmt: skip
        example = access.traces.hard_example(trace_id)
        found["hard_example"] = asdict(example) if example is not None else None
        return found

    @router.get("/console/api/traces/{trace_id}/image")
    def trace_image(trace_id: str, operator: Operator = Depends(reader)) -> Response:
        _visible_trace(trace_id, operator)
        request = _request(access.traces, trace_id)
        if request is None or not isinstance(request.input, EncodedImage):
            raise HTTPException(404, f"trace {trace_id}: its image is no longer kept (console.trace_images_kept)")
        return Response(
            request.input.data, media_type=request.input.media_type, headers={"Cache-Control": "private, max-age=3600"}
        )

    def _visible_trace(trace_id: str, operator: Operator) -> tuple[Optional[HubTrace], str]:
        """The trace (None once pruned, if it is kept as a hard example) and its device, or 404 for an operator who
        does not see that device."""
        try:
            validate_trace_id(trace_id)
        except ProtocolError as exc:
            raise HTTPException(400, str(exc)) from exc
        trace = access.traces.get(trace_id)
        device_id = trace.device_id if trace is not None else None
        if device_id is None:
            example = access.traces.hard_example(trace_id)
            device_id = example.device_id if example is not None else None
        if device_id is None or not visible(operator, device_id):
            raise HTTPException(404, f"no trace {trace_id}")
        return trace, device_id

    @router.get("/console/api/hard-examples")
    def hard_examples(
        labelled: Optional[bool] = None,
        limit: int = Query(200, ge=1, le=2000),
        operator: Operator = Depends(reader),
    ) -> list[dict[str, Any]]:
        globs = operator.tenant_devices if operator.tenant is not None else None
        found = access.traces.hard_examples(labelled, limit * 5 if operator.scoped else limit, globs)
        return [asdict(h) for h in found if visible(operator, h.device_id)][:limit]

    @router.post("/console/api/hard-examples/{trace_id}")
    def label(trace_id: str, body: Label, operator: Operator = Depends(labeller)) -> dict[str, Any]:
        """Confirm the cloud's label or correct it; recorded with who said so."""
        example = access.traces.hard_example(trace_id)
        if example is None or not visible(operator, example.device_id):
            raise HTTPException(404, f"no hard example {trace_id}")
        access.traces.label_hard_example(trace_id, body.label, operator.name, time.time())
        fleet().store.audit(time.time(), operator.name, "label", trace_id, {"label": body.label})
        updated = access.traces.hard_example(trace_id)
        return asdict(updated) if updated else {}

    @router.get("/console/api/hard-examples/export")
    def export(operator: Operator = Depends(reader)) -> Response:
        """Every labelled example this operator sees, as an image-folder dataset for retraining the edge model."""
        globs = operator.tenant_devices if operator.tenant is not None else None
        examples = [h for h in access.traces.hard_examples(True, 1_000_000, globs) if visible(operator, h.device_id)]
        return Response(
            _dataset(access.traces, examples),
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="tandem-hard-examples.zip"'},
        )

    @router.get("/console/api/alerts")
    def alerts(operator: Operator = Depends(reader)) -> list[dict[str, Any]]:
        return [a.view() for a in fleet().store.alerts(limit=200) if _sees_alert(operator, a.kind, a.subject)]

    def _sees_alert(operator: Operator, kind: str, subject: str) -> bool:
        if not operator.scoped:
            return True
        if kind == "rollout_aborted":
            groups = access.fleet.rollouts().groups(subject)
            return bool(groups) and operator.may_change(groups)
        return visible(operator, subject)

    @router.get("/console/events")
    async def events(request: Request, operator: Operator = Depends(reader)) -> StreamingResponse:
        return StreamingResponse(
            _stream(request, operator),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(request: Request, operator: Operator) -> AsyncIterator[str]:
        """Each kind's state, sent when it changed since the last one sent; the fleet as changed rows only."""
        sent_rows: dict[str, str] = {}
        sent: dict[str, str] = {}
        quiet_since = time.monotonic()
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            payloads = await asyncio.to_thread(_snapshot, operator, sent_rows)
            for kind, data in payloads.items():
                text = json.dumps(data, separators=(",", ":"))
                digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
                if kind == "fleet" or sent.get(kind) != digest:
                    if kind == "fleet" and not data["changed"] and not data["removed"]:
                        continue
                    sent[kind] = digest
                    quiet_since = time.monotonic()
                    yield f"event: {kind}\ndata: {text}\n\n"
            if time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keepalive\n\n"
            await asyncio.sleep(EVENT_EVERY_S)

    def _snapshot(operator: Operator, sent_rows: dict[str, str]) -> dict[str, Any]:
        rows = [r for r in access.feed.rows() if operator.sees_device(r["device_id"], r["group"])]
        changed = []
        for row in rows:
            key = json.dumps({k: v for k, v in row.items() if k != "last_seen_age_s"}, sort_keys=True)
            if sent_rows.get(row["device_id"]) != key:
                sent_rows[row["device_id"]] = key
                changed.append(row)
        removed = sorted(sent_rows.keys() - {r["device_id"] for r in rows})
        for device_id in removed:
            del sent_rows[device_id]
        rollouts = access.fleet.rollouts()
        payloads: dict[str, Any] = {
            "fleet": {"now": time.time(), "changed": changed, "removed": removed},
            "rollouts": [
                {**r, "devices": _device_states(rollouts, r)}
                for r in rollouts.summaries()
                if not operator.scoped or operator.may_change(rollouts.groups(r["rollout_id"]))
            ],
            "alerts": [a.view() for a in fleet().store.alerts(active=True) if _sees_alert(operator, a.kind, a.subject)],
        }
        if access.orchestrator is not None and operator.tenant is None:
            try:
                waiting = access.orchestrator().store.proposals((ProposalState.PROPOSED,), 100)
            except HubError:  # not started yet, or off
                waiting = []
            payloads["proposals"] = [p.proposal_id for p in waiting]
        return payloads

    return router


def _device_states(rollouts: RolloutService, summary: dict[str, Any]) -> dict[str, int]:
    """How many of a rollout's devices are in each state (a running one's: so its page redraws as they move)."""
    if summary["state"] not in (RolloutState.RUNNING.value, RolloutState.PAUSED.value):
        return {}
    counts: dict[str, int] = {}
    for row in rollouts.store.devices(summary["rollout_id"]):
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


def _me(operator: Operator) -> dict[str, Any]:
    return {
        "name": operator.name,
        "role": operator.role.value,
        "groups": list(operator.groups),
        "tenant": operator.tenant,
        "permissions": sorted(p.value for p in PERMISSIONS[operator.role]),
    }


def _request(traces: TraceStore, trace_id: str) -> Any:
    raw = traces.request_of(trace_id)
    if raw is None:
        return None
    try:
        return decode_request(raw)
    except ProtocolError:
        return None  # a row written by an older hub, or damaged: the page says the image is gone


def _trace_row(traces: TraceStore, trace: Any) -> dict[str, Any]:
    verdict = None
    if trace.result is not None:
        try:
            final = decode_result(trace.result).final
        except ProtocolError:
            final = None
        verdict = f"{final.label} ({final.confidence:.2f})" if final is not None else None
    return {
        "trace_id": trace.trace_id,
        "verdict": verdict,
        "status": trace.status.value,
        "route": trace.route,
        "received_at": trace.received_at,
        "finished_at": trace.finished_at,
        "hard_example": traces.hard_example(trace.trace_id) is not None,
    }


def _dataset(traces: TraceStore, examples: list[HardExample]) -> bytes:
    """images/<label>/<trace_id>.<ext> and labels.csv, the layout image-folder loaders read."""
    out = io.BytesIO()
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", "label", "trace_id", "device_id", "edge_label", "cloud_label", "labelled_by"])
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for example in examples:
            request = _request(traces, example.trace_id)
            if request is None or not isinstance(request.input, EncodedImage):
                continue
            name = f"images/{example.label}/{example.trace_id}.{IMAGE_TYPES.get(request.input.media_type, 'bin')}"
            archive.writestr(name, request.input.data)
            writer.writerow(
                [name, example.label, example.trace_id, example.device_id, example.edge_label, example.cloud_label,
                 example.labelled_by]
            )  # fmt: skip
        archive.writestr("labels.csv", table.getvalue())
    return out.getvalue()
