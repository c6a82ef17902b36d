"""Getting each finished result to its device, and again until the device confirms it has it.

    finish ─> trace store (held) ────> send: the waiting gRPC call, else an HTTP callback (if a rule
                                              matches the device), else MQTT QoS 1 on its results topic
    ack ─────> acked_at; no more sends        (a ResultAck on .../acks, a callback's 2xx, the gRPC response)
    no ack ──> sent again at next_send_at:    resend_after_s, then doubling, max_sends in all; after the
                                              last, the result waits in the trace store (?acked=false)
    sooner:                                   when the device escalates the same trace again, and when it
                                              comes back online (everything it has not acknowledged)

The trace store is the queue, so a hub that restarts sends what is due. It
holds each result's bytes as they go out on MQTT (``result_encoding``), and a
resend publishes them as stored: nothing is decoded or encoded again (an HTTP
callback, in its rule's encoding, is the exception). A device deduplicates on
trace_id, so a result that arrives twice is harmless.
Each send is counted in the store before it leaves, so the trace's ``sends``
is true even when the device's acknowledgement beats the send's bookkeeping.
One result that cannot be sent (a damaged row, a device id no topic can
carry) is logged, counted and set aside; it never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Optional

from cloud.config import CallbackRule, DeliveryConfig
from cloud.dispatch.callbacks import HttpCallbacks
from cloud.dispatch.mqtt import Publisher
from cloud.metrics import HubMetrics
from cloud.traces.store import TraceStore
from protocol.codec import Encoding, decode_result, encode_result
from protocol.messages import EscalationResult

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often the resend loop looks for due results at most
ONLINE_RESENDS = 1000  # most results sent at once to a device that comes back online (the rest: when due)
CLAIM_HOLD_S = 30.0  # a claimed result that its replica did not send (it died meanwhile) is due again after this
WAIT_POLL_S = 1.0  # a call waiting for a result also reads the store this often (a missed notification)


class Delivery:
    def __init__(
        self,
        store: TraceStore,
        mqtt: Publisher,
        config: DeliveryConfig,
        metrics: HubMetrics,
        encoding: Encoding = Encoding.PROTOBUF,
        callbacks: Optional[HttpCallbacks] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._mqtt = mqtt
        self._config = config
        self._metrics = metrics
        self.encoding = encoding  # of the results' bytes, as stored and as published
        self._callbacks = callbacks
        self._clock = clock
        self._waiters: dict[str, list[asyncio.Future[EscalationResult]]] = {}

    def send(self, result: EscalationResult, stored: bytes) -> None:
        """The first send of a result the trace store holds (``stored``: its bytes there): to a gRPC call
        waiting for it, if any."""
        waiting = [w for w in self._waiters.pop(result.trace_id, []) if not w.done()]
        if waiting:
            self._sent(result.trace_id, 0, "grpc")
            for waiter in waiting:
                waiter.set_result(result)
            return
        self._try_dispatch(result.trace_id, result.device_id, stored, 0)

    def send_untracked(self, result: EscalationResult) -> None:
        """A result with no trace behind it (a request refused before it was recorded): one send, no resends."""
        payload = encode_result(result, self.encoding)
        self._publish(result.trace_id, result.device_id, payload, self._rule(result.device_id))

    def delivered(self, trace_id: str) -> None:
        """The broker has the result (its PUBACK): recorded; resends wait for the device's own ack."""
        self._store.mark_delivered(trace_id, self._clock())

    def acknowledged(self, trace_id: str, device_id: str, channel: str) -> bool:
        """The device has the result: no more sends. False if nothing was waiting for this acknowledgement."""
        if not self._store.mark_acked(trace_id, device_id, self._clock()):
            logger.debug("result %s: acknowledgement from %s matched nothing unacknowledged", trace_id, device_id)
            return False
        self._metrics.acks.labels(channel=channel).inc()
        return True

    def resend_now(self, trace_id: str) -> None:
        """The device escalated a finished trace again: if it has not acknowledged the result, it is due now."""
        if self._store.send_now(trace_id, self._clock()):
            logger.info("result %s: asked for again by its device; sending it now", trace_id)

    def device_online(self, device_id: str) -> int:
        """A device (re)connected, maybe to a broker that lost what was sent: every result it has not acknowledged
        goes out now, those out of sends included (each send counted as usual). Returns how many went out."""
        sent = 0
        for trace in self._store.query(device_id=device_id, acked=False, limit=ONLINE_RESENDS):
            if trace.result is None:
                continue
            if self._try_dispatch(trace.trace_id, trace.device_id, trace.result, trace.sends):
                sent += 1
        return sent

    def waiter(self, trace_id: str) -> asyncio.Future[EscalationResult]:
        """A future the result of trace_id is set on, instead of sending it elsewhere. Call ``forget`` after.

        Where replicas share the store, another replica may run the trace (this call is a device's retry): its
        result reaches this one's waiter by the store's notification (``listen_for_results``), or, should that be
        lost, by ``wait``'s polling of the store."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EscalationResult] = loop.create_future()
        self._waiters.setdefault(trace_id, []).append(future)
        return future

    async def wait(self, trace_id: str, future: asyncio.Future[EscalationResult]) -> EscalationResult:
        """The waiter's result: set by this replica's ``send``, or read from the store once another replica
        stored it."""
        while True:
            done, _ = await asyncio.wait({future}, timeout=WAIT_POLL_S if self._store.shared else None)
            if done:
                return future.result()
            stored = self._stored_result(trace_id)
            if stored is not None:
                return stored

    def listen_for_results(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hear of results other replicas store (a shared store only), for this replica's waiting calls."""
        if self._store.shared:

            def heard(trace_id: str) -> None:
                loop.call_soon_threadsafe(self._finished_elsewhere, trace_id)

            self._store.on_finished(heard)

    def _finished_elsewhere(self, trace_id: str) -> None:
        waiting = [w for w in self._waiters.get(trace_id, []) if not w.done()]
        if not waiting:
            return
        result = self._stored_result(trace_id)
        if result is not None:
            for waiter in waiting:
                waiter.set_result(result)

    def _stored_result(self, trace_id: str) -> Optional[EscalationResult]:
        trace = self._store.get(trace_id)
        return decode_result(trace.result) if trace is not None and trace.result is not None else None

    def forget(self, trace_id: str, future: asyncio.Future[EscalationResult]) -> None:
        waiting = self._waiters.get(trace_id, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._waiters.pop(trace_id, None)

    def resend_due(self) -> int:
        """Send every result whose next send time has come; return how many went out. Each is claimed first
        (several replicas share the store: one sends it)."""
        sent = 0
        for trace in self._store.claim_due(self._clock(), CLAIM_HOLD_S):
            if trace.result is None:
                continue
            if trace.sends >= self._config.max_sends:
                logger.warning(
                    "result %s: no acknowledgement after %d sends, the most allowed; it stays in the trace store"
                    " (GET /v1/traces?acked=false)",
                    trace.trace_id,
                    trace.sends,
                )
                self._store.stop_sending(trace.trace_id)
                self._metrics.given_up.inc()
                continue
            if trace.sends:
                logger.info("result %s: no acknowledgement after %d sends; sending again", trace.trace_id, trace.sends)
            if self._try_dispatch(trace.trace_id, trace.device_id, trace.result, trace.sends):
                sent += 1
        return sent

    def _try_dispatch(self, trace_id: str, device_id: str, payload: bytes, sends: int) -> bool:
        """One send of a stored result. One that no channel can take (a device id no topic can hold, bytes a
        callback cannot decode: a bug or a damaged file) is logged, counted and set aside, so it cannot block the
        rest; a store error goes up to the caller, whose next round tries again."""
        rule = self._rule(device_id)
        self._sent(trace_id, sends, "callback" if rule is not None else "mqtt")
        try:
            self._publish(trace_id, device_id, payload, rule)
        except Exception as exc:
            logger.error("result %s: cannot be sent, set aside: %s", trace_id, exc)
            self._metrics.delivery_errors.labels(channel="any", reason=type(exc).__name__).inc()
            self._store.stop_sending(trace_id)
            return False
        return True

    async def run(self) -> None:
        """Resend what is due, until cancelled. A store error is logged and tried again next round."""
        while True:
            try:
                self.resend_due()
                upcoming = self._store.next_due_at()
            except Exception:
                logger.exception("delivery: resend round failed; trying again in %.0f s", POLL_S)
                upcoming = None
            wait = POLL_S if upcoming is None else min(POLL_S, max(0.0, upcoming - self._clock()))
            await asyncio.sleep(wait)

    def _rule(self, device_id: str) -> Optional[CallbackRule]:
        return self._callbacks.rule_for(device_id) if self._callbacks is not None else None

    def _publish(self, trace_id: str, device_id: str, payload: bytes, rule: Optional[CallbackRule]) -> None:
        if rule is not None and self._callbacks is not None:
            self._callbacks.post(rule, decode_result(payload))  # in the rule's own encoding
            return
        self._mqtt.publish(device_id, trace_id, payload)

    def _sent(self, trace_id: str, sends_before: int, channel: str) -> None:
        """Count the send; the result is due again after resend_after_s, doubling with each send."""
        sends = sends_before + 1
        self._store.mark_sent(trace_id, self._clock() + self._config.resend_after_s * 2 ** (sends - 1))
        self._metrics.sends.labels(channel=channel, attempt="first" if sends == 1 else "resend").inc()
