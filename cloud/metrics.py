"""The hub's metrics, in a Prometheus registry of its own, served at ``GET /metrics``.

Counters are updated where things happen; the number of results waiting for
a device's acknowledgement is read from the trace store when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Unacked(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "tandem_hub_results_unacknowledged",
            "finished results no device has confirmed yet (GET /v1/traces?acked=false)",
            value=self._count(),
        )


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.escalations = Counter(
            "tandem_hub_escalations",
            "escalations received: accepted, duplicate (a trace_id seen before), rejected (bad input), over_quota",
            ["ack"],
            registry=self.registry,
        )
        self.results = Counter(
            "tandem_hub_results", "finished escalations by status", ["status"], registry=self.registry
        )
        self.sends = Counter(
            "tandem_hub_result_sends",
            "results sent to devices, by channel (mqtt, callback, grpc) and attempt (first, resend)",
            ["channel", "attempt"],
            registry=self.registry,
        )
        self.acks = Counter(
            "tandem_hub_result_acks",
            "results a device confirmed, by channel (mqtt: its ResultAck, callback: a 2xx, grpc: the response)",
            ["channel"],
            registry=self.registry,
        )
        self.delivery_errors = Counter(
            "tandem_hub_delivery_errors",
            "sends that failed or were refused, by channel and reason",
            ["channel", "reason"],
            registry=self.registry,
        )
        self.bad_acks = Counter(
            "tandem_hub_bad_result_acks",
            "acknowledgements that could not be used: undecodable, or for no result of that device",
            ["reason"],
            registry=self.registry,
        )
        self.reruns = Counter(
            "tandem_hub_trace_reruns",
            "accepted traces run again because they had no result and no run in progress (a restart, a run that died)",
            registry=self.registry,
        )
        self.replica_reruns = Counter(
            "tandem_hub_replica_lost_reruns",
            "traces run again because a model replica died under them (a node lost), not because of the input",
            registry=self.registry,
        )
        self.hard_examples = Counter(
            "tandem_hub_hard_examples",
            "escalations the cloud labelled otherwise than the device, kept for the console's labelling queue",
            registry=self.registry,
        )
        self.alerts = Counter(
            "tandem_hub_alerts",
            "alerts raised (a device silent, an escalation-rate jump, a rollout aborted), by kind",
            ["kind"],
            registry=self.registry,
        )
        self.webhook_errors = Counter(
            "tandem_hub_alert_webhook_errors",
            "alerts the webhook did not take (no answer, or not 2xx); each is tried again at the next check",
            registry=self.registry,
        )
        self.given_up = Counter(
            "tandem_hub_results_out_of_sends",
            "results sent max_sends times without an acknowledgement; they stay in the trace store",
            registry=self.registry,
        )

        self.sessions = Counter(
            "tandem_hub_device_sessions",
            "device session changes, by the state entered (INIT at first contact, ACTIVE, SLEEP)",
            ["state"],
            registry=self.registry,
        )
        self.fleet_messages = Counter(
            "tandem_hub_fleet_messages",
            "device reports, heartbeats and availability messages, by channel and outcome (ok, or the error)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.rollouts = Counter(
            "tandem_hub_rollouts",
            "rollouts ended, by how (COMPLETED, ABORTED, ROLLED_BACK)",
            ["state"],
            registry=self.registry,
        )
        self.desired_sent = Counter(
            "tandem_hub_desired_published", "desired states published to devices (retained)", registry=self.registry
        )

        self.orchestrator_ticks = Counter(
            "tandem_hub_orchestrator_ticks",
            "orchestrator rounds (snapshot, rules, advice, guardrails)",
            registry=self.registry,
        )
        self.orchestrator_proposals = Counter(
            "tandem_hub_orchestrator_proposals",
            "orchestrator actions by source (rules, llm, intent) and what became of them (APPLIED, BLOCKED, ...)",
            ["source", "state"],
            registry=self.registry,
        )
        self.orchestrator_llm = Counter(
            "tandem_hub_orchestrator_llm_calls",
            "language-model consultations by outcome: answered, cached (decision cache hit), malformed, unavailable,"
            " busy (an earlier call still running)",
            ["outcome"],
            registry=self.registry,
        )
        self.orchestrator_cache_hit_rate = Gauge(
            "tandem_hub_orchestrator_decision_cache_hit_rate",
            "share of language-model consultations answered from the decision cache",
            registry=self.registry,
        )
        self.http_refusals = Counter(
            "tandem_hub_http_refusals",
            "HTTP requests refused before use: too_large (413), invalid (422), unauthorized (401), forbidden (403),"
            " rate_limited (429)",
            ["reason"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "tandem_hub_quota_refusals",
            "escalations and admin requests refused for a quota: device_escalations_per_s, escalations_per_s"
            " (a tenant's), max_stored_traces, operator_requests_per_s; by tenant (empty: none)",
            ["quota", "tenant"],
            registry=self.registry,
        )
        self.identity_refusals = Counter(
            "tandem_hub_identity_refusals",
            "device calls refused for who made them: revoked (a revoked certificate), impostor (a device id other"
            " than the certificate's), no_certificate, enrolment (a bad, used or expired token, or a bad CSR)",
            ["reason"],
            registry=self.registry,
        )
        self.identities = Counter(
            "tandem_hub_identity_changes",
            "device identities by event: token (an enrolment token made), enrolled, revoked",
            ["event"],
            registry=self.registry,
        )

    def watch_unacked(self, count: Callable[[], int]) -> None:
        self.registry.register(_Unacked(count))
