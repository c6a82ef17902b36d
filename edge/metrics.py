"""The edge runtime's metrics, in a Prometheus registry of its own (one per runtime).

Counters and histograms are updated where things happen. Gauges that
describe the current state (fps, outbox depth and age, the source's state)
are read from the runtime when Prometheus scrapes, through ``watch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass(frozen=True)
class SourceStatus:
    """One camera's state, as /healthz and the gauges show it."""

    source_id: str
    state: str
    dropped: int = 0
    reconnects: int = 0
    down_s: float = 0.0


@dataclass(frozen=True)
class RuntimeState:
    """What the gauges show, read at scrape time."""

    fps: float
    outbox_rows: int
    outbox_bytes: int
    outbox_oldest_age_s: float
    failed_rows: int
    sources: tuple[SourceStatus, ...]
    store_full: bool = False


SOURCE_STATES = ("connecting", "up", "down", "closed", "file")


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], RuntimeState]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._read()
        yield GaugeMetricFamily("tandem_edge_fps", "Frames processed per second, over the last 10 s", value=s.fps)
        yield GaugeMetricFamily("tandem_edge_outbox_rows", "Escalations waiting for a verdict", value=s.outbox_rows)
        yield GaugeMetricFamily("tandem_edge_outbox_bytes", "Payload bytes in the outbox", value=s.outbox_bytes)
        yield GaugeMetricFamily(
            "tandem_edge_outbox_oldest_age_seconds", "Age of the oldest outbox row", value=s.outbox_oldest_age_s
        )
        yield GaugeMetricFamily(
            "tandem_edge_failed_rows", "Escalations in the failed table (tandem edge replay)", value=s.failed_rows
        )
        yield GaugeMetricFamily(
            "tandem_edge_store_full",
            "1 while the device store's filesystem is full and frames are not recorded",
            value=float(s.store_full),
        )
        state = GaugeMetricFamily(
            "tandem_edge_source_state", "1 for the source's current state", labels=["source", "state"]
        )
        for source in s.sources:
            for name in SOURCE_STATES:
                state.add_metric([source.source_id, name], 1.0 if name == source.state else 0.0)
        yield state
        for metric, help_text, field in (
            ("tandem_edge_source_frames_dropped", "Live frames overwritten before the loop took them", "dropped"),
            ("tandem_edge_source_reconnects", "Times the source came back after going down", "reconnects"),
            ("tandem_edge_source_down_seconds", "Time the source spent down", "down_s"),
        ):
            family = GaugeMetricFamily(metric, help_text, labels=["source"])
            for source in s.sources:
                family.add_metric([source.source_id], float(getattr(source, field)))
            yield family


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._frame_children: dict[tuple[str, str], Counter] = {}
        self._decision_children: dict[tuple[str, str, str], Counter] = {}
        self.frames = Counter(
            "tandem_edge_frames", "Frames by camera and how their trace ended up", ["camera", "outcome"], registry=r
        )
        self.inference_ms = Histogram(
            "tandem_edge_inference_ms", "Model time per frame, in ms", buckets=MS_BUCKETS, registry=r
        )
        self.decisions = Counter(
            "tandem_edge_judge_decisions",
            "Judge decisions by camera, verdict and what settled it (a policy, audit, rate_limit, ...)",
            ["camera", "verdict", "cause"],
            registry=r,
        )
        self.escalations_sent = Counter(
            "tandem_edge_escalations_sent",
            "Escalation sends, by what acknowledged them: the hub in the call (accepted, duplicate), or the MQTT "
            "broker (relayed; relayed_again: a resend because the hub had not confirmed the last one)",
            ["ack"],
            registry=r,
        )
        self.hub_acks = Counter(
            "tandem_edge_hub_acks",
            "The hub's confirmations of escalations sent over MQTT: accepted, duplicate, repeat (already confirmed)",
            ["status"],
            registry=r,
        )
        self.send_errors = Counter("tandem_edge_send_errors", "Failed escalation sends", ["retryable"], registry=r)
        self.escalation_bytes = Histogram(
            "tandem_edge_escalation_bytes",
            "Encoded image bytes per escalation, by camera, what was sent (frame or crop) and format",
            ["camera", "payload", "format"],
            buckets=(1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6),
            registry=r,
        )
        self.escalation_rtt_ms = Histogram(
            "tandem_edge_escalation_rtt_ms",
            "From the frame's judgement to the hub's verdict, in ms",
            buckets=MS_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            "tandem_edge_verdicts", "Hub results by what they did to their trace", ["outcome"], registry=r
        )
        self.model_updates = Counter(
            "tandem_edge_model_updates",
            "Model bundles the hub sent, by how they ended (active, failed, rolled_back) and why (a Refusal code)",
            ["state", "reason"],
            registry=r,
        )
        self.ack_errors = Counter(
            "tandem_edge_result_ack_errors",
            "Result acknowledgements that could not be queued (the hub resends the result; the repeat is acked)",
            registry=r,
        )
        self.bad_results = Counter(
            "tandem_edge_bad_results",
            "Messages from the hub that could not be decoded: results (error: the reason), escalation acks (ack:...)",
            ["error"],
            registry=r,
        )
        self.fallbacks = Counter("tandem_edge_fallbacks", "Traces whose deadline passed without a verdict", registry=r)
        self.store_errors = Counter(
            "tandem_edge_store_errors", "Writes to the device store that failed", ["operation"], registry=r
        )
        self.sensor_errors = Counter(
            "tandem_edge_sensor_errors", "Sensor readings skipped or lost", ["sensor", "error"], registry=r
        )
        self.outbox_dropped = Counter(
            "tandem_edge_outbox_dropped", "Escalations that left the outbox without a verdict", ["reason"], registry=r
        )
        self.actions = Counter(
            "tandem_edge_actions",
            "Actions on answers (alerts, webhook calls) by outcome",
            ["action", "outcome"],
            registry=r,
        )

    def count_frame(self, camera: str, outcome: str) -> None:
        """``frames{camera, outcome}`` + 1, with the labelled child looked up once (this runs on every frame)."""
        key = (camera, outcome)
        child = self._frame_children.get(key)
        if child is None:
            child = self._frame_children[key] = self.frames.labels(camera=camera, outcome=outcome)
        child.inc()

    def count_decision(self, camera: str, verdict: str, cause: str) -> None:
        key = (camera, verdict, cause)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(camera=camera, verdict=verdict, cause=cause)
        child.inc()

    def watch(self, read: Callable[[], RuntimeState]) -> None:
        """Serve the runtime's current state as gauges, read at each scrape."""
        self.registry.register(_StateCollector(read))

    def value(self, name: str, **labels: str) -> float:
        """Current value of counter ``tandem_edge_<name>``, summed over the labels not given (0 if never counted)."""
        wanted = f"tandem_edge_{name}_total"
        return sum(
            sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if sample.name == wanted and all(sample.labels.get(k) == v for k, v in labels.items())
        )
