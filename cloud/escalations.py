"""The escalation service: the hub's transport-agnostic core.

``escalate`` records a request and acknowledges it; the work runs in the
background: the model, the result into the trace store, then the result out
to the device. gRPC and HTTP adapters are thin layers over this class, and it
runs without Ray (the model arrives as a ``ModelClient``).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from cloud.dispatch.mqtt import Publisher
from cloud.traces.store import TraceStatus, TraceStore
from protocol.codec import Encoding, decode_request, decode_result, encode_request, encode_result
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


@dataclass(frozen=True)
class ModelAnswer:
    prediction: Prediction
    batch_size: int = 1
    """How many requests the model ran together with this one (dynamic batching)."""


class ModelClient(abc.ABC):
    """How the service reaches a model (a Ray Serve handle in production)."""

    @abc.abstractmethod
    async def predict(self, request: EscalationRequest) -> ModelAnswer:
        """The model's answer for the request's input."""


class EscalationService:
    def __init__(
        self,
        store: TraceStore,
        model: ModelClient,
        publisher: Publisher,
        encoding: Encoding = Encoding.PROTOBUF,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._model = model
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

    async def process(self, request: EscalationRequest, received: float) -> None:
        started = self._clock()
        self.store.set_running(request.trace_id, started)
        timings = [HopTiming("queue", (started - received) * 1000.0)]
        try:
            answer = await self._model.predict(request)
        except ProtocolError as exc:
            result = self._failed(request, timings, f"bad input: {exc}")
        except Exception as exc:  # any model failure becomes a FAILED result the device can act on
            logger.exception("trace %s: model failed", request.trace_id)
            result = self._failed(request, timings, f"model failed: {type(exc).__name__}: {exc}")
        else:
            prediction = answer.prediction
            hop = f"model:{prediction.model_id}" + (f" (batch of {answer.batch_size})" if answer.batch_size > 1 else "")
            timings.append(HopTiming(hop, (self._clock() - started) * 1000.0))
            final = Prediction("aggregate:single", "1", prediction.labels, prediction.scores)
            result = EscalationResult(
                request.trace_id, request.device_id, ResultStatus.SUCCESS, (prediction,), final, tuple(timings)
            )
        self.finish(result)

    def finish(self, result: EscalationResult) -> None:
        status = TraceStatus(result.status.name)
        payload = encode_result(result, self._encoding)
        self.store.set_finished(result.trace_id, status, encode_result(result), result.error or None, self._clock())
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

    def _failed(self, request: EscalationRequest, timings: list[HopTiming], error: str) -> EscalationResult:
        logger.warning("trace %s: %s", request.trace_id, error)
        return EscalationResult(
            request.trace_id, request.device_id, ResultStatus.FAILED, timings=tuple(timings), error=error
        )

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
