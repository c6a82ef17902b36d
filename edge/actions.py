"""Actions on answers: an alert on ``tandem/v1/devices/{id}/alerts`` and a webhook call, for chosen classes.

An action fires once a trace's answer is settled: a confident local answer,
the hub's verdict, or the local answer at the deadline (fallback). With
``judge.answer: immediately`` an escalated frame's local answer fires at once
too, and the verdict fires again only if it differs (``corrected``).

Alerts go out at QoS 1 on the device's own broker connection (paho queues
them while the broker is away). Webhook calls run on one background thread
with a timeout and a few retries; a call that still fails is logged and
counted, never allowed to hold up the frame loop.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Optional

from edge.config import ActionsConfig, EdgeConfig
from edge.judge.states import TraceState
from edge.metrics import EdgeMetrics
from edge.outbox import EdgeStore, TraceRecord, VerdictOutcome
from edge.sources.base import Frame
from protocol.messages import Prediction
from protocol.topics import Channel

logger = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = 3


@dataclass(frozen=True)
class Answer:
    trace_id: str
    device_id: str
    source_id: str
    frame_index: int
    label: str
    confidence: float
    decided_by: str
    """edge (confident), edge_provisional (answer: immediately), cloud, or fallback."""
    corrected: bool = False
    """The hub's verdict differs from an answer already acted on."""
    at: float = 0.0


Publish = Callable[[Channel, bytes], None]  # the device link's publish


class Actions:
    def __init__(self, config: ActionsConfig, publish: Publish, metrics: EdgeMetrics) -> None:
        self._config = config
        self._labels = frozenset(config.alert_labels)
        self._publish = publish
        self._metrics = metrics
        self._pool: Optional[ThreadPoolExecutor] = None

    def wants(self, label: Optional[str]) -> bool:
        return label is not None and (not self._labels or label in self._labels) and self._config.enabled

    def start(self) -> None:
        if self._config.webhook_url:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tandem-webhook")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def fire(self, answer: Answer) -> None:
        if not self.wants(answer.label) or answer.confidence < self._config.alert_min_confidence:
            return
        body = json.dumps(asdict(answer)).encode()
        try:
            self._publish(Channel.ALERTS, body)
            self._metrics.actions.labels(action="alert", outcome="queued").inc()
        except (ConnectionError, OSError) as exc:
            logger.warning("alert for %s not queued: %s", answer.trace_id, exc)
            self._metrics.actions.labels(action="alert", outcome="failed").inc()
        if self._pool is not None:
            self._pool.submit(self._call_webhook, answer.trace_id, body)

    def _call_webhook(self, trace_id: str, body: bytes) -> None:
        url = str(self._config.webhook_url)
        delay = 0.5
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self._config.webhook_timeout_ms / 1000.0) as reply:
                    reply.read()
                self._metrics.actions.labels(action="webhook", outcome="ok").inc()
                return
            except (urllib.error.URLError, OSError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()  # an error reply holds its connection until closed
                logger.warning("webhook for %s, attempt %d/%d: %s", trace_id, attempt, WEBHOOK_ATTEMPTS, exc)
                time.sleep(delay)
                delay *= 2
        self._metrics.actions.labels(action="webhook", outcome="failed").inc()


class Settlement:
    """Decides when a trace's answer is settled and fires the actions for it; records the escalation round trip."""

    def __init__(
        self, config: EdgeConfig, store: EdgeStore, actions: Actions, metrics: EdgeMetrics, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._store = store
        self._actions = actions
        self._metrics = metrics
        self._clock = clock
        self.answer = config.judge.answer
        """judge.answer in effect: the hub's settings change it without a restart."""

    def new_trace(
        self, trace_id: str, frame: Frame, prediction: Optional[Prediction], state: TraceState, now: float
    ) -> None:
        """A confident local answer settles at once; with answer: immediately, so does an escalated one."""
        if prediction is None or not self._actions.wants(prediction.label):
            return
        if state is TraceState.COMPLETE:
            decided_by = "edge"
        elif state is TraceState.PENDING_CLOUD and self.answer == "immediately":
            decided_by = "edge_provisional"
        else:
            return
        self._actions.fire(
            Answer(
                trace_id,
                self._config.device_id,
                frame.source_id,
                frame.index,
                prediction.label,
                prediction.confidence,
                decided_by,
                at=now,
            )
        )

    def verdict(self, trace_id: str, outcome: VerdictOutcome) -> None:
        trace = self._store.trace(trace_id)
        if trace is None or trace.final_label is None:
            return
        if trace.escalated_at is not None and trace.verdict_at is not None and outcome is VerdictOutcome.COMPLETED:
            self._metrics.escalation_rtt_ms.observe((trace.verdict_at - trace.escalated_at) * 1000.0)
        # A late verdict comes after the fallback already acted on the local answer.
        self._settled(trace, "cloud" if trace.cloud_label is not None else "fallback", outcome is VerdictOutcome.LATE)

    def fallback(self, trace_ids: list[str]) -> None:
        """The worker's deadline pass: these traces now stand on the local answer."""
        for trace_id in trace_ids:
            trace = self._store.trace(trace_id)
            if trace is not None:
                self._settled(trace, "fallback")

    def _settled(self, trace: TraceRecord, decided_by: str, after_fallback: bool = False) -> None:
        acted_already = after_fallback or self.answer == "immediately"
        if acted_already and trace.final_label == trace.local_label:
            return  # the answer acted on stands
        confidence = trace.cloud_confidence if decided_by == "cloud" else trace.local_confidence
        self._actions.fire(
            Answer(
                trace.trace_id,
                self._config.device_id,
                trace.source_id,
                trace.frame_index,
                str(trace.final_label),
                float(confidence or 0.0),
                decided_by,
                corrected=acted_already,
                at=self._clock(),
            )
        )
