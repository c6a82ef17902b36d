"""``/v1/admin/orchestrator``, ``/v1/admin/proposals`` and ``/v1/admin/intents``: the orchestrator for operators.

    GET  /v1/admin/orchestrator                 mode, language model, decision-cache hit rate, counts, budget
    GET  /v1/admin/orchestrator/snapshot        what it sees now
    GET  /v1/admin/proposals?state=PROPOSED     proposals, newest first
    POST /v1/admin/proposals {"action": {...}}  an operator's own action (guardrails, then approval)
    POST /v1/admin/proposals/{id}/approve       apply a waiting proposal (the bounds are checked again)
    POST /v1/admin/proposals/{id}/reject
    POST /v1/admin/proposals/{id}/revert        undo an applied action
    POST /v1/admin/intents {"text": "..."}      the language model's proposals for an operator's intent
    GET  /v1/admin/orchestrator/audit?after=N   the hash-chained audit log; ?verify=true checks the chain

Every route takes the operator's bearer token (``cloud.api.access``: read for the views, propose for proposals and
intents, approve for the steps, within the operator's groups); approvals and reverts record who.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Optional, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.api.access import Operator, Permission, Require
from cloud.errors import HubError, InvalidAction, http_status
from cloud.orchestrator.actions import groups_touched, parse_action
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.store import ProposalState

T = TypeVar("T")


class NewProposal(BaseModel):
    action: dict[str, Any] = Field(description="one of the orchestrator's tools, e.g. {tool: set_replicas, ...}")
    reason: str = Field("", max_length=500)


class Intent(BaseModel):
    text: str = Field(min_length=1, max_length=2000, description="what the operator wants, in plain words")


def orchestrator_routes(
    orchestrator: Callable[[], Orchestrator],
    require: Require,
    loop: Callable[[], Optional[asyncio.AbstractEventLoop]],
) -> APIRouter:
    """``loop``: the hub's event loop, where the orchestrator runs (the HTTP server may run on another)."""
    router = APIRouter()
    reader = require(Permission.READ)
    proposer = require(Permission.PROPOSE)
    approver = require(Permission.APPROVE)

    async def on_hub(call: Callable[[Orchestrator], Coroutine[Any, Any, T]]) -> T:
        try:
            target = orchestrator()
            hub_loop = loop()
            if hub_loop is None or hub_loop is asyncio.get_running_loop():
                return await call(target)
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(target), hub_loop))
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc

    def sync(call: Callable[[Orchestrator], T]) -> T:
        try:
            return call(orchestrator())
        except HubError as exc:
            raise HTTPException(http_status(exc), str(exc)) from exc

    def hub_view(operator: Operator = Depends(reader)) -> Operator:
        """The orchestrator's own views hold every group's figures: not for a tenant's operators."""
        if operator.tenant is not None:
            raise HTTPException(
                403, f"{operator.name} works for tenant {operator.tenant}: the orchestrator's view is hub-wide"
            )
        return operator

    def within(operator: Operator, action: dict[str, Any]) -> bool:
        try:
            return operator.may_change(groups_touched(parse_action(action)))
        except ValueError:
            return not operator.scoped  # a malformed answer: hub-wide

    @router.get("/v1/admin/orchestrator")
    def status(operator: Operator = Depends(hub_view)) -> dict[str, Any]:
        return sync(lambda o: o.status())

    @router.get("/v1/admin/proposals")
    def proposals(
        operator: Operator = Depends(reader),
        state: Optional[ProposalState] = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        """Proposals, newest first; a scoped operator's: those that touch only their groups."""
        rows = sync(lambda o: o.store.proposals((state,) if state else None, limit if not operator.scoped else 1000))
        return [r.view() for r in rows if not operator.scoped or within(operator, r.action)][:limit]

    @router.post("/v1/admin/proposals", status_code=201)
    async def propose(body: NewProposal, operator: Operator = Depends(proposer)) -> dict[str, Any]:
        """An operator's own action: checked by the guardrails, then it waits for approval."""
        try:
            action = parse_action(body.action)
        except ValueError as exc:
            error = InvalidAction(f"not one of the orchestrator's tools: {exc}")
            raise HTTPException(http_status(error), str(error)) from exc
        operator.check_scope(groups_touched(action), action.tool)
        row = await on_hub(lambda o: o.propose(body.action, body.reason, operator.name))
        return row.view()

    @router.get("/v1/admin/orchestrator/snapshot")
    async def snapshot(operator: Operator = Depends(hub_view)) -> dict[str, Any]:
        """What the orchestrator sees now: models, groups, load rules, the pool, rollouts, cost."""
        return await on_hub(lambda o: o.snapshot())

    @router.post("/v1/admin/proposals/{proposal_id}/{step}")
    async def decide(proposal_id: str, step: str, operator: Operator = Depends(approver)) -> dict[str, Any]:
        steps = {"approve": Orchestrator.approve, "reject": Orchestrator.reject, "revert": Orchestrator.revert}
        if step not in steps:
            raise HTTPException(404, f"no step {step!r}: approve, reject or revert")
        proposed = sync(lambda o: o.store.get(proposal_id)).action
        try:
            touched = groups_touched(parse_action(proposed))
        except ValueError:
            touched = []  # a malformed answer: hub-wide (only an unscoped approver may even reject it)
        operator.check_scope(touched, f"proposal {proposal_id}")
        row = await on_hub(lambda o: steps[step](o, proposal_id, operator.name))
        return row.view()

    @router.post("/v1/admin/intents")
    async def intent(body: Intent, operator: Operator = Depends(proposer)) -> list[dict[str, Any]]:
        """The language model turns the intent into proposals; they wait for approval like any other (an approver
        within their scope decides them)."""
        rows = await on_hub(lambda o: o.intent(body.text, operator.name))
        return [r.view() for r in rows]

    @router.get("/v1/admin/orchestrator/audit")
    def audit(
        operator: Operator = Depends(hub_view),
        after: int = Query(0, ge=0),
        limit: int = Query(200, ge=1, le=2000),
        verify: bool = False,
    ) -> dict[str, Any]:
        def read(o: Orchestrator) -> dict[str, Any]:
            found: dict[str, Any] = {"entries": o.store.entries(after, limit)}
            if verify:
                broken = o.store.verify()
                found["chain"] = "intact" if broken is None else f"broken: {broken}"
            return found

        return sync(read)

    return router
