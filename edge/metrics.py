"""The edge runtime's counters, in a Prometheus registry of its own (one per runtime)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.frames = Counter(
            "tandem_edge_frames", "Frames by how their trace ended up", ["outcome"], registry=self.registry
        )
        self.escalations_sent = Counter(
            "tandem_edge_escalations_sent", "Escalations the hub acknowledged", ["ack"], registry=self.registry
        )
        self.send_errors = Counter(
            "tandem_edge_send_errors", "Failed escalation sends", ["retryable"], registry=self.registry
        )
        self.verdicts = Counter(
            "tandem_edge_verdicts", "Hub results by what they did to their trace", ["outcome"], registry=self.registry
        )
        self.bad_results = Counter(
            "tandem_edge_bad_results", "Result messages that could not be decoded", ["error"], registry=self.registry
        )
        self.fallbacks = Counter(
            "tandem_edge_fallbacks", "Traces whose deadline passed without a verdict", registry=self.registry
        )
        self.store_errors = Counter(
            "tandem_edge_store_errors", "Writes to the device store that failed", ["operation"], registry=self.registry
        )

        self.sensor_errors = Counter(
            "tandem_edge_sensor_errors", "Sensor readings skipped or lost", ["sensor", "error"], registry=self.registry
        )

        self.decisions = Counter(
            "tandem_edge_judge_decisions",
            "Judge decisions by verdict and what settled it (a policy, audit, rate_limit, ...)",
            ["verdict", "cause"],
            registry=self.registry,
        )
        self.outbox_dropped = Counter(
            "tandem_edge_outbox_dropped",
            "Escalations that left the outbox without a verdict",
            ["reason"],
            registry=self.registry,
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of counter ``tandem_edge_<name>`` with these labels (0 if never counted)."""
        sample = self.registry.get_sample_value(f"tandem_edge_{name}_total", labels or None)
        return sample or 0.0
