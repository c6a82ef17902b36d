"""The escalation service: the hub's transport-agnostic core.

``escalate`` records a request and acknowledges it; the work runs in the
background: the routing rules pick the models (or the cache answers), the
result goes into the trace store, then out to the device. gRPC and HTTP
adapters are thin layers over this class, and it runs without Ray (the
models arrive as ``ModelBackend``s inside the ``Router``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine

from cloud.dispatch.mqtt import Publisher
from cloud.errors import NoRoute
from cloud.routing.cache import CachedAnswer, ResultCache
from cloud.routing.router import Outcome, Plan, Router
from cloud.traces.store import TraceStatus, TraceStore
from protocol.codec import Encoding, decode_request, decode_result, encode_request, encode_result
from protocol.errors import ProtocolError
from protocol.messages import (
    AckStatus,
    EscalationAck,
    EscalationRequest,
    EscalationResult,
    HopTiming,
    ResultStatus,
)

logger = logging.getLogger(__name__)


class EscalationService:
    def __init__(
        self,
        store: TraceStore,
        router: Router,
        publisher: Publisher,
        encoding: Encoding = Encoding.PROTOBUF,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.use(router)
        self._publisher = publisher
        self._encoding = encoding
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    async def escalate(self, request: EscalationRequest) -> EscalationAck:
        """Record the request (idempotent on trace_id) and start it; the result goes out on MQTT."""
        received = self._clock()
        if not self.store.insert_if_absent(request.trace_id, request.device_id, encode_request(request), received):
            logger.info("trace %s: duplicate escalation from %s", request.trace_id, request.device_id)
            return EscalationAck(request.trace_id, AckStatus.DUPLICATE)
        self._spawn(self.process(request, received))
        return EscalationAck(request.trace_id, AckStatus.ACCEPTED)

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
        key = cache.key(request, plan) if plan.route.cache else None
        cached = cache.get(key) if key is not None else None
        if cached is not None:
            timings.append(HopTiming("cache", (self._clock() - started) * 1000.0))
            self.finish(self._answered(request, plan, cached, timings, 0.0))
            return
        try:
            outcome = await router.run(plan, request)
        except Exception as exc:  # a router bug must still answer the device, and say so
            logger.exception("trace %s: routing failed", request.trace_id)
            self.finish(self._failed(request, timings, f"routing failed: {type(exc).__name__}: {exc}"))
            return
        timings.extend(_hops(outcome))
        if outcome.final is None:
            status = ResultStatus.TIMED_OUT if outcome.timed_out else ResultStatus.FAILED
            self.finish(self._failed(request, timings, outcome.error, status, plan, outcome.cost))
            return
        answer = CachedAnswer(outcome.final, tuple(s.answer.prediction for s in outcome.steps if s.answer))
        if key is not None:
            cache.put(key, answer)
        self.finish(self._answered(request, plan, answer, timings, outcome.cost))

    def finish(self, result: EscalationResult) -> None:
        status = TraceStatus(result.status.name)
        payload = encode_result(result, self._encoding)
        stored = encode_result(result)
        self.store.set_finished(
            result.trace_id, status, stored, result.error or None, self._clock(), result.route, result.cost
        )
        self._publisher.publish(result.device_id, result.trace_id, payload)

    def reject(self, device_id: str, trace_id: str, error: str) -> None:
        """Answer a request that could not be accepted with a FAILED result (for transports with no reply)."""
        result = EscalationResult(trace_id, device_id, ResultStatus.FAILED, error=error)
        self._publisher.publish(device_id, trace_id, encode_result(result, self._encoding))

    def recover(self) -> tuple[int, int]:
        """After a restart: rerun accepted-but-unfinished traces, resend undelivered results."""
        rerun = 0
        for trace_id, request_bytes in self.store.unfinished():
            try:
                request = decode_request(request_bytes)
            except ProtocolError as exc:
                logger.error("trace %s: stored request no longer decodes: %s", trace_id, exc)
                continue
            self._spawn(self.process(request, self._clock()))
            rerun += 1
        resent = 0
        for trace in self.store.undelivered():
            if trace.result is not None:
                payload = encode_result(decode_result(trace.result), self._encoding)
                self._publisher.publish(trace.device_id, trace.trace_id, payload)
                resent += 1
        if rerun or resent:
            logger.info("recovered %d unfinished traces, resent %d undelivered results", rerun, resent)
        return rerun, resent

    def mark_delivered(self, trace_id: str) -> None:
        self.store.mark_delivered(trace_id, self._clock())

    async def drain(self) -> None:
        """Wait for every background trace to finish (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

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
            error=error,
            cost=cost,
            route=plan.route.name if plan is not None else "",
        )

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


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
