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

Every route takes the operator's bearer token (``fleet.operators``); approvals and reverts record who.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Optional, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from cloud.api.fleet import operator_auth
from cloud.errors import HubError, http_status
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
    operators: Mapping[str, str],
    loop: Callable[[], Optional[asyncio.AbstractEventLoop]],
) -> APIRouter:
    """``loop``: the hub's event loop, where the orchestrator runs (the HTTP server may run on another)."""
    router = APIRouter()
    who = operator_auth(operators)

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

    @router.get("/v1/admin/orchestrator")
    def status(operator: str = Depends(who)) -> dict[str, Any]:
        return sync(lambda o: o.status())

    @router.get("/v1/admin/proposals")
    def proposals(
        state: Optional[ProposalState] = None, limit: int = Query(100, ge=1, le=1000), operator: str = Depends(who)
    ) -> list[dict[str, Any]]:
        return sync(lambda o: [r.view() for r in o.store.proposals((state,) if state else None, limit)])

    @router.post("/v1/admin/proposals", status_code=201)
    async def propose(body: NewProposal, operator: str = Depends(who)) -> dict[str, Any]:
        """An operator's own action: checked by the guardrails, then it waits for approval."""
        row = await on_hub(lambda o: o.propose(body.action, body.reason, operator))
        return row.view()

    @router.get("/v1/admin/orchestrator/snapshot")
    async def snapshot(operator: str = Depends(who)) -> dict[str, Any]:
        """What the orchestrator sees now: models, groups, load rules, the pool, rollouts, cost."""
        return await on_hub(lambda o: o.snapshot())

    @router.post("/v1/admin/proposals/{proposal_id}/{step}")
    async def decide(proposal_id: str, step: str, operator: str = Depends(who)) -> dict[str, Any]:
        steps = {"approve": Orchestrator.approve, "reject": Orchestrator.reject, "revert": Orchestrator.revert}
        if step not in steps:
            raise HTTPException(404, f"no step {step!r}: approve, reject or revert")
        row = await on_hub(lambda o: steps[step](o, proposal_id, operator))
        return row.view()

    @router.post("/v1/admin/intents")
    async def intent(body: Intent, operator: str = Depends(who)) -> list[dict[str, Any]]:
        """The language model turns the intent into proposals; they wait for approval like any other."""
        rows = await on_hub(lambda o: o.intent(body.text, operator))
        return [r.view() for r in rows]

    @router.get("/v1/admin/orchestrator/audit")
    def audit(
        after: int = Query(0, ge=0), limit: int = Query(200, ge=1, le=2000), verify: bool = False,
        operator: str = Depends(who),
    ) -> dict[str, Any]:  # fmt: skip
        def read(o: Orchestrator) -> dict[str, Any]:
            found: dict[str, Any] = {"entries": o.store.entries(after, limit)}
            if verify:
                broken = o.store.verify()
                found["chain"] = "intact" if broken is None else f"broken: {broken}"
            return found

        return sync(read)

    return router
