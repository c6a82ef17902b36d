"""The escalation service: the hub's transport-agnostic core.

``escalate`` records a request and acknowledges it; the work runs in the
background: the routing rules pick the models (or the cache answers), the
result goes into the trace store, then to the device (``Delivery``: MQTT, an
HTTP callback, or the gRPC call of ``escalate_and_wait``). gRPC and MQTT
adapters are thin layers over this class, and it runs without Ray (the
models arrive as ``ModelBackend``s inside the ``Router``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Optional

from cloud.config import QuotaConfig
from cloud.dispatch.delivery import CLAIM_HOLD_S, Delivery
from cloud.errors import InvalidInput, NoRoute, QuotaExceeded, one_line
from cloud.inputs import InputLimits, check_input, check_size
from cloud.metrics import HubMetrics
from cloud.routing.cache import CachedAnswer, ResultCache
from cloud.routing.router import Router
from cloud.routing.steps import Outcome, Plan
from cloud.tenants import PriorityGate, Tenancy
from cloud.traces.store import TraceStatus, TraceStore
from protocol.codec import decode_request, decode_result, encode_request, encode_result
from protocol.errors import ProtocolError
from protocol.messages import (
    AckStatus,
    EscalationAck,
    EscalationRequest,
    EscalationResult,
    HopTiming,
    Prediction,
    ResultStatus,
)

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500  # a FAILED result tells the device why in a line; the details stay in the hub's log
RUNS_FOR_LOST_REPLICAS = 3  # a trace whose model replica died under it runs up to this many times in all
RERUN_AFTER_S = 2.0  # ...the second run this long after the first failed, the third twice as long


class EscalationService:
    def __init__(
        self,
        store: TraceStore,
        router: Router,
        delivery: Delivery,
        metrics: HubMetrics,
        clock: Callable[[], float] = time.time,
        limits: Optional[InputLimits] = None,
        on_escalation: Callable[[str], None] = lambda _device_id: None,
        tenancy: Optional[Tenancy] = None,
        max_concurrent_runs: int = 256,
    ) -> None:
        """``on_escalation``: told the device id of every escalation recorded (the fleet's sessions);
        ``tenancy``: the quotas each escalation must pass, and each device's tenant and priority;
        ``max_concurrent_runs``: escalations using the models at once (the rest wait, higher priority first)."""
        self.store = store
        self.tenancy = tenancy or Tenancy({}, QuotaConfig())
        self._gate = PriorityGate(max_concurrent_runs)
        self._refusals_logged: dict[str, float] = {}
        self._on_escalation = on_escalation
        self.use(router)
        self.delivery = delivery
        self.metrics = metrics
        self.limits = limits or InputLimits()
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}  # trace_id -> its routing, while it runs

    async def escalate(self, request: EscalationRequest, wire: Optional[bytes] = None) -> EscalationAck:
        """Record the request (idempotent on trace_id) and start it; the result is delivered when ready.

        ``wire``: the request's bytes as they arrived, when the transport has them; they are stored as they
        are (a request is parsed once, not parsed, encoded and stored).

        InvalidInput (RequestTooLarge) if the hub refuses the input, QuotaExceeded if the device or its tenant
        is over a quota: nothing is recorded or run. A duplicate of a finished trace the device has not
        acknowledged is also a request for its result: it goes out now.
        """
        received = self._clock()
        stored = wire if wire is not None else encode_request(request)
        try:
            check_size(len(stored), self.limits)
            check_input(request.input, self.limits)
        except InvalidInput as exc:
            logger.warning("trace %s from %s refused: %s", request.trace_id, request.device_id, exc)
            self.metrics.escalations.labels(ack="rejected").inc()
            raise
        try:
            self.tenancy.admit(request.device_id)
        except QuotaExceeded as exc:
            self._over_quota(request.device_id, exc)
            raise
        self._on_escalation(request.device_id)
        if not self.store.insert_if_absent(request.trace_id, request.device_id, stored, received):
            self.tenancy.refund(request.device_id)  # nothing new to run
            logger.info("trace %s: duplicate escalation from %s", request.trace_id, request.device_id)
            self.metrics.escalations.labels(ack="duplicate").inc()
            self.delivery.resend_now(request.trace_id)
            return EscalationAck(request.trace_id, AckStatus.DUPLICATE)
        self.metrics.escalations.labels(ack="accepted").inc()
        self._start(request, received)
        return EscalationAck(request.trace_id, AckStatus.ACCEPTED)

    async def escalate_and_wait(self, request: EscalationRequest, wire: Optional[bytes] = None) -> EscalationResult:
        """``escalate``, then answer with the result itself; that answer is its delivery.

        A repeat of a finished trace gets the stored result. If the caller goes away first
        (cancelled: its deadline passed), the result goes out the usual way instead."""
        waiter = self.delivery.waiter(request.trace_id)  # before the work starts, so it cannot finish unseen
        try:
            ack = await self.escalate(request, wire)
            stored = self.store.get(request.trace_id) if ack.status is AckStatus.DUPLICATE else None
            if stored is not None and stored.result is not None:
                result = decode_result(stored.result)
            else:
                result = await self.delivery.wait(request.trace_id, waiter)
        finally:
            self.delivery.forget(request.trace_id, waiter)
        self.delivery.acknowledged(result.trace_id, result.device_id, "grpc")
        return result

    def use(self, router: Router) -> None:
        """New routing rules (hot reload): requests already running finish on the rules they started with."""
        self.router = router
        self.cache = ResultCache(router.config.cache, router.config.digest())

    async def process(self, request: EscalationRequest, received: float) -> None:
        started = self._clock()
        self.store.set_running(request.trace_id, started)
        timings = [HopTiming("queue", (started - received) * 1000.0)]
        router, cache = self.router, self.cache
        try:
            plan = router.plan(request)
        except NoRoute as exc:
            self.finish(self._failed(request, timings, str(exc)))
            return
        tenant = self.tenancy.tenant_of(request.device_id)
        key = cache.key(request, plan, tenant or "") if plan.route.cache else None
        cached = cache.get(key) if key is not None else None
        if cached is not None:
            timings.append(HopTiming("cache", (self._clock() - started) * 1000.0))
            self.finish(self._answered(request, plan, cached, timings, 0.0), request)
            return
        try:
            outcome = await self._run(router, plan, request)
        except Exception as exc:  # a router bug must still answer the device, and say so
            logger.exception("trace %s: routing failed", request.trace_id)
            self.finish(self._failed(request, timings, f"routing failed: {type(exc).__name__}: {one_line(str(exc))}"))
            return
        timings.extend(_hops(outcome))
        if outcome.final is None:
            status = ResultStatus.TIMED_OUT if outcome.timed_out else ResultStatus.FAILED
            self.finish(self._failed(request, timings, outcome.error, status, plan, outcome.cost))
            return
        answer = CachedAnswer(
            outcome.final, tuple(s.answer.prediction for s in outcome.steps if s.answer), request.device_id
        )
        if key is not None:
            cache.put(key, answer)
        self.finish(self._answered(request, plan, answer, timings, outcome.cost), request)

    async def _run(self, router: Router, plan: Plan, request: EscalationRequest) -> Outcome:
        """The plan, run again (after RERUN_AFTER_S, then twice that) when it failed only for want of a live
        replica: one died under the call, as when a node is lost, and Serve has not yet routed around it. The
        input is not at fault, so the device gets an answer, late, rather than a failure. At most
        RUNS_FOR_LOST_REPLICAS runs."""
        for run in range(1, RUNS_FOR_LOST_REPLICAS + 1):
            async with self._gate.slot(self.tenancy.priority_of(request.device_id)):
                outcome = await router.run(plan, request)
            if outcome.ok or not outcome.replica_lost or run == RUNS_FOR_LOST_REPLICAS:
                return outcome
            wait_s = RERUN_AFTER_S * run
            logger.warning("trace %s: %s; running it again in %.0f s", request.trace_id, outcome.error, wait_s)
            self.metrics.replica_reruns.inc()
            await asyncio.sleep(wait_s)
        return outcome

    def finish(self, result: EscalationResult, request: Optional[EscalationRequest] = None) -> None:
        """Store the result, then send it; the store keeps it until the device acknowledges it. It is held for
        this replica meanwhile (due to the others only CLAIM_HOLD_S later), so no other replica's resend loop
        sends it too."""
        status = TraceStatus(result.status.name)
        stored = encode_result(result, self.delivery.encoding)  # the bytes every send of it publishes
        error = result.error or None
        now = self._clock()
        self.store.set_finished(
            result.trace_id, status, stored, error, now, result.route, result.cost, due_at=now + CLAIM_HOLD_S
        )
        self.metrics.results.labels(status=status.value).inc()
        self.delivery.send(result, stored)
        if request is not None and result.final is not None:
            self._keep_if_hard(request, result.final)

    def _keep_if_hard(self, request: EscalationRequest, final: Prediction) -> None:
        """A frame the cloud labelled otherwise than the device is a hard example (the console's labelling queue).
        Kept after the result went out; a store error here loses no result, only the example."""
        edge_label, cloud_label = request.local_prediction.label, final.label
        if edge_label == cloud_label:
            return
        try:
            if self.store.add_hard_example(request.trace_id, edge_label, cloud_label):
                self.metrics.hard_examples.inc()
        except Exception:
            logger.exception("trace %s: could not keep it as a hard example", request.trace_id)

    def _over_quota(self, device_id: str, exc: QuotaExceeded) -> None:
        """Counted every time; logged once a second per quota and tenant, so a flood does not flood the log."""
        tenant = self.tenancy.tenant_of(device_id) or ""
        self.metrics.escalations.labels(ack="over_quota").inc()
        self.metrics.quota_refusals.labels(quota=exc.quota, tenant=tenant).inc()
        key, now = f"{exc.quota}:{tenant or device_id}", self._clock()
        if now - self._refusals_logged.get(key, 0.0) >= 1.0:
            self._refusals_logged[key] = now
            logger.warning("escalations refused: %s (counted in tandem_hub_quota_refusals_total)", exc)

    def answer_refused(self, device_id: str, trace_id: str, error: str) -> None:
        """Answer a request that was not accepted with a FAILED result (for transports with no reply)."""
        self.delivery.send_untracked(EscalationResult(trace_id, device_id, ResultStatus.FAILED, error=error))

    def recover(self) -> int:
        """Rerun accepted traces that have no result and no routing running: this replica's own (after a restart,
        all of them, when it is the only one), and any whose replica's claim lapsed (it died). Finished results
        that are still unacknowledged are due in the trace store; the delivery loop sends them."""
        rerun = 0
        for trace_id, request_bytes in self.store.claim_unfinished(self._clock()):
            if trace_id in self._running:
                continue
            try:
                request = decode_request(request_bytes)
            except ProtocolError as exc:
                logger.error("trace %s: stored request no longer decodes: %s", trace_id, exc)
                continue
            self._start(request, self._clock())
            rerun += 1
        if rerun:
            logger.warning("reran %d accepted traces that had no result and no run in progress", rerun)
            self.metrics.reruns.inc(rerun)
        return rerun

    def renew_claims(self) -> int:
        """The traces running here stay this replica's (their leases in the trace store are renewed)."""
        return self.store.renew(list(self._running), self._clock()) if self._running else 0

    async def stop(self, timeout_s: float) -> None:
        """Wait up to timeout_s for running traces, then cancel the rest: they stay unfinished in the store,
        and ``recover`` runs them again at the next start."""
        try:
            await asyncio.wait_for(self.drain(), timeout_s)
        except asyncio.TimeoutError:
            running = list(self._running.values())
            logger.warning(
                "%d traces still running after %.0f s; cancelled, to run again at the next start",
                len(running),
                timeout_s,
            )
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def drain(self) -> None:
        """Wait for every background trace to finish (tests, shutdown)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    def _answered(
        self, request: EscalationRequest, plan: Plan, answer: CachedAnswer, timings: list[HopTiming], cost: float
    ) -> EscalationResult:
        return EscalationResult(
            request.trace_id,
            request.device_id,
            ResultStatus.SUCCESS,
            answer.outputs,
            answer.final,
            tuple(timings),
            cost=cost,
            route=plan.route.name,
        )

    def _failed(
        self,
        request: EscalationRequest,
        timings: list[HopTiming],
        error: str,
        status: ResultStatus = ResultStatus.FAILED,
        plan: Plan | None = None,
        cost: float = 0.0,
    ) -> EscalationResult:
        logger.warning("trace %s: %s: %s", request.trace_id, status.name, error)
        return EscalationResult(
            request.trace_id,
            request.device_id,
            status,
            timings=tuple(timings),
            error=one_line(error, MAX_ERROR_CHARS),
            cost=cost,
            route=plan.route.name if plan is not None else "",
        )

    def _start(self, request: EscalationRequest, received: float) -> None:
        """Run the trace in the background, in a context of its own.

        Not the caller's: under Ray Serve that holds the gRPC request's context, and Serve cancels every
        model call made in a request's context when its client goes away, which would end this run
        half-way and leave the trace RUNNING for good (a device that timed out or was killed mid-call).
        The work belongs to the trace, which outlives the call that brought it."""
        loop = asyncio.get_running_loop()
        task = contextvars.Context().run(loop.create_task, self.process(request, received))
        self._running[request.trace_id] = task
        task.add_done_callback(lambda _task: self._running.pop(request.trace_id, None))


def _hops(outcome: Outcome) -> list[HopTiming]:
    """One hop per step: "model:NAME@REPLICA", with its batch size, or "failed" when it did not answer."""
    hops = []
    for step in outcome.steps:
        hop = f"model:{step.step.model}@{step.replica}"
        if step.answer is None:
            hop += " failed"
        elif step.answer.batch_size > 1:
            hop += f" (batch of {step.answer.batch_size})"
        hops.append(HopTiming(hop, step.ms))
    return hops
