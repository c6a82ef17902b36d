"""The escalation worker: sends due outbox rows to the hub and expires overdue traces.

One background thread does both, because both are timed work on the same
store: it sleeps until the next retry or deadline is due, or until the frame
loop wakes it with a new escalation.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Optional

from edge.comms.transport import Transport
from edge.config import OutboxConfig
from edge.errors import StoreError, StoreFull, TransportError
from edge.metrics import EdgeMetrics
from edge.outbox.records import OutboxRow
from edge.outbox.store import EdgeStore
from protocol.messages import EscalationAck

logger = logging.getLogger(__name__)

IDLE_WAKE_S = 1.0  # wake at least this often, to notice a clock that moved
HOUSEKEEPING_S = 60.0  # how often the outbox TTL and the retention are applied


def backoff_s(attempts: int, initial_ms: float, max_ms: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempts`` (1-based): doubling from initial_ms, capped at max_ms, "equal jitter".

    Half the delay is fixed and half random, so a fleet that lost the hub at
    the same moment does not retry in lockstep, yet no retry comes too soon.
    """
    capped = min(max_ms, initial_ms * 2 ** max(0, attempts - 1)) / 1000.0
    return capped / 2 + rand() * capped / 2


class EscalationWorker:
    def __init__(
        self,
        store: EdgeStore,
        transport: Transport,
        config: OutboxConfig,
        metrics: EdgeMetrics,
        clock: Callable[[], float] = time.time,
        on_fallback: Callable[[list[str]], None] = lambda _ids: None,
    ) -> None:
        self._store = store
        self._on_fallback = on_fallback
        self._transport = transport
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # The pool starts its threads on first use, not here.
        self._pool = ThreadPoolExecutor(config.max_in_flight, thread_name_prefix="tandem-send")
        self._housekeeping_at = 0.0
        self._store_full = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tandem-escalations", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("escalation worker did not stop within %.1f s", timeout_s)
            self._thread = None
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.expire_overdue()
                if time.monotonic() >= self._housekeeping_at:
                    self.housekeeping()
                    self._housekeeping_at = time.monotonic() + HOUSEKEEPING_S
                self.send_due()
                wait = self._seconds_to_next_event()
                if self._store_full:
                    logger.warning("escalation worker: the device store takes writes again")
                    self._store_full = False
            except StoreFull as exc:  # said once; the runtime's /healthz and gauge say it meanwhile
                if not self._store_full:
                    logger.error("escalation worker: device store full, waiting for space: %s", exc)
                    self._store_full = True
                self._metrics.store_errors.labels(operation="worker_full").inc()
                wait = IDLE_WAKE_S
            except StoreError as exc:
                logger.error("escalation worker: store error, retrying in %.1f s: %s", IDLE_WAKE_S, exc)
                self._metrics.store_errors.labels(operation="worker").inc()
                wait = IDLE_WAKE_S
            except Exception:  # a bug must not end the thread that empties the outbox
                logger.exception("escalation worker: unexpected error, retrying in %.1f s", IDLE_WAKE_S)
                self._metrics.store_errors.labels(operation="worker_bug").inc()
                wait = IDLE_WAKE_S
            self._wake.wait(wait)
            self._wake.clear()

    def _seconds_to_next_event(self) -> float:
        now = self._clock()
        due = [t for t in (self._store.next_due_at(), self._store.next_deadline()) if t is not None]
        return max(0.0, min([IDLE_WAKE_S, *(t - now for t in due)]))

    def expire_overdue(self) -> int:
        expired = self._store.expire(self._clock())
        for trace_id in expired:
            logger.info("trace %s: no verdict before its deadline; the local answer stands", trace_id)
        if expired:
            self._metrics.fallbacks.inc(len(expired))
            self._on_fallback(expired)
        return len(expired)

    def housekeeping(self) -> None:
        """Move escalations past the TTL to the failed table; delete what is past retention."""
        now = self._clock()
        expired = self._store.expire_outbox(now, self._config.ttl_s)
        if expired:
            logger.warning(
                "%d escalations passed the outbox TTL of %g s; moved to the failed table",
                len(expired),
                self._config.ttl_s,
            )
            self._metrics.outbox_dropped.labels(reason="ttl").inc(len(expired))
        traces, failed = self._store.prune(now, self._config.trace_retention_s, self._config.failed_retention_s)
        if traces or failed:
            logger.info("retention: deleted %d finished traces and %d failed escalations", traces, failed)

    def send_due(self) -> int:
        """Send due rows, up to max_in_flight at once; each failure schedules its own retry."""
        rows = self._store.due(self._clock(), limit=self._config.max_in_flight)
        sends: dict[Future[Optional[EscalationAck]], OutboxRow] = {
            self._pool.submit(self._transport.send, row.trace_id, row.payload): row for row in rows
        }
        sent = 0
        for future in as_completed(sends):
            row = sends[future]
            try:
                ack = future.result()
            except TransportError as exc:
                self._failed(row, exc)
                continue
            if ack is None:  # a relay took it; unless the hub confirms it in time, it goes again
                config = self._config
                wait = backoff_s(row.relays + 1, config.confirm_timeout_ms, config.confirm_timeout_max_ms)
                self._store.mark_sent(row.trace_id, resend_at=self._clock() + wait)
                self._metrics.escalations_sent.labels(ack="relayed" if row.relays == 0 else "relayed_again").inc()
            else:
                self._store.mark_sent(row.trace_id)
                self._metrics.escalations_sent.labels(ack=ack.status.name.lower()).inc()
            sent += 1
        return sent

    def _failed(self, row: OutboxRow, exc: TransportError) -> None:
        self._metrics.send_errors.labels(retryable=str(exc.retryable).lower()).inc()
        if not exc.retryable:
            logger.error("trace %s: hub rejected the escalation; moved to the failed table: %s", row.trace_id, exc)
            fell_back = self._store.mark_failed(row.trace_id, str(exc), self._clock())
            self._metrics.outbox_dropped.labels(reason="permanent_error").inc()
            if fell_back:
                self._on_fallback([row.trace_id])
            return
        delay = backoff_s(row.attempts + 1, self._config.retry_initial_ms, self._config.retry_max_ms)
        logger.warning(
            "trace %s: send attempt %d failed, retrying in %.2f s: %s", row.trace_id, row.attempts + 1, delay, exc
        )
        self._store.mark_retry(row.trace_id, str(exc), self._clock() + delay)
