"""The escalation worker against a fake transport (a subclass of the real interface)."""

import pytest

from edge.comms.transport import Transport
from edge.config import OutboxConfig
from edge.errors import TransportError
from edge.judge import TraceMachine, TraceState
from edge.metrics import EdgeMetrics
from edge.outbox import OutboxStatus
from edge.outbox.worker import EscalationWorker, backoff_s
from protocol import AckStatus, EscalationAck, Prediction, new_trace_id


class ScriptedTransport(Transport):
    """Answers each send with the next scripted outcome: an exception, an ack status, or None (a relay took it)."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.sent: list[bytes] = []

    def start(self):
        pass

    def send(self, trace_id, payload):
        self.sent.append(payload)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return None if outcome is None else EscalationAck(payload.decode(), outcome)

    def close(self):
        pass


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def enqueue(store, now):
    trace_id = new_trace_id()
    m = TraceMachine()
    for s in (TraceState.INFERRED, TraceState.JUDGED, TraceState.PENDING_CLOUD):
        m.advance(s, "", at=now)
    store.record_trace(
        trace_id,
        m,
        source_id="c",
        frame_index=0,
        truth=None,
        prediction=Prediction("m", "1", ("a", "b"), (0.5, 0.5)),
        reasons=(),
        created_at=now,
        escalation=trace_id.encode(),
        deadline_at=now + 60,
    )
    return trace_id


def make_worker(store, transport, clock, max_in_flight=1):
    config = OutboxConfig(retry_initial_ms=200, retry_max_ms=1000, max_in_flight=max_in_flight)
    return EscalationWorker(store, transport, config, EdgeMetrics(), clock), config


def test_hub_down_then_back(store):
    clock = Clock()
    trace_id = enqueue(store, clock.now)
    transport = ScriptedTransport([TransportError("UNAVAILABLE", retryable=True), AckStatus.ACCEPTED])
    worker, config = make_worker(store, transport, clock)
    assert worker.send_due() == 0
    (row,) = store.outbox()
    assert row.status is OutboxStatus.QUEUED and row.attempts == 1 and "UNAVAILABLE" in row.last_error
    assert config.retry_initial_ms / 2000 <= row.next_attempt_at - clock.now <= config.retry_initial_ms / 1000
    assert worker.send_due() == 0  # not due yet: nothing is sent
    clock.now = row.next_attempt_at
    assert worker.send_due() == 1
    assert store.outbox()[0].status is OutboxStatus.ACCEPTED
    assert transport.sent == [trace_id.encode()] * 2


def test_a_relayed_escalation_is_sent_again_until_the_hub_confirms_it(store):
    """MQTT: the broker's PUBACK is not the hub's. Unconfirmed, the row goes again after confirm_timeout_ms,
    doubling with each relay; the hub's acknowledgement (mark_accepted) ends the resends."""
    clock = Clock()
    trace_id = enqueue(store, clock.now)
    transport = ScriptedTransport([None, None, None])
    config = OutboxConfig(confirm_timeout_ms=1000, confirm_timeout_max_ms=3000)
    worker = EscalationWorker(store, transport, config, EdgeMetrics(), clock)
    waits = []
    for _ in range(3):
        assert worker.send_due() == 1
        (row,) = store.outbox()
        assert row.status is OutboxStatus.SENT
        waits.append(row.next_attempt_at - clock.now)
        assert worker.send_due() == 0  # not before its time
        clock.now = row.next_attempt_at
    # Equal jitter: between half and all of 1 s, 2 s, then the 3 s cap.
    for wait, cap in zip(waits, (1.0, 2.0, 3.0), strict=True):
        assert cap / 2 <= wait <= cap
    assert store.outbox()[0].relays == 3
    assert store.mark_accepted(trace_id)
    clock.now += 3600
    assert worker.send_due() == 0 and store.outbox()[0].status is OutboxStatus.ACCEPTED
    assert len(transport.sent) == 3


def test_permanent_rejection_is_kept_for_an_operator(store):
    clock = Clock()
    enqueue(store, clock.now)
    worker, _ = make_worker(store, ScriptedTransport([TransportError("INVALID_ARGUMENT", retryable=False)]), clock)
    worker.send_due()
    assert store.outbox() == []
    (row,) = store.failed()
    assert "INVALID_ARGUMENT" in row.reason


def test_sends_in_parallel_up_to_the_limit(store):
    clock = Clock()
    ids = {enqueue(store, clock.now) for _ in range(5)}
    transport = ScriptedTransport([AckStatus.ACCEPTED] * 5)
    worker, _ = make_worker(store, transport, clock, max_in_flight=3)
    assert worker.send_due() == 3
    assert worker.send_due() == 2
    assert {p.decode() for p in transport.sent} == ids


def test_overdue_traces_fall_back(store):
    clock = Clock()
    trace_id = enqueue(store, clock.now)
    worker, _ = make_worker(store, ScriptedTransport([]), clock)
    clock.now += 61
    assert worker.expire_overdue() == 1
    assert store.trace(trace_id).state is TraceState.FALLBACK_COMPLETE


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_doubles_is_capped_and_jittered(attempt):
    cap = min(2.0, 0.1 * 2 ** (attempt - 1))
    low, high = backoff_s(attempt, 100, 2000, rand=lambda: 0.0), backoff_s(attempt, 100, 2000, rand=lambda: 1.0)
    assert low == pytest.approx(cap / 2) and high == pytest.approx(cap)
