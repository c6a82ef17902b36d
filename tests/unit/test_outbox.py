"""The device store: traces and the outbox in real SQLite files."""

import sqlite3

import pytest

from edge.errors import StoreError
from edge.judge import TraceMachine, TraceState
from edge.outbox import EdgeStore, VerdictOutcome
from edge.outbox.store import OutboxStatus
from protocol import EscalationResult, Prediction, ResultStatus, new_trace_id

LABELS = ("0", "1", "2")


def pred(top: int, confidence: float = 0.6) -> Prediction:
    scores = [(1 - confidence) / 2] * 3
    scores[top] = confidence
    return Prediction("m", "1", LABELS, tuple(scores))


def pending_machine() -> TraceMachine:
    m = TraceMachine()
    for s in (TraceState.INFERRED, TraceState.JUDGED, TraceState.PENDING_CLOUD):
        m.advance(s, s.value, at=100.0)
    return m


def escalate(store: EdgeStore, now: float = 100.0, deadline_s: float = 5.0, truth: str = "1") -> str:
    trace_id = new_trace_id()
    store.record_trace(
        trace_id, pending_machine(), source_id="cam0", frame_index=0, truth=truth, prediction=pred(0),
        reasons=("confidence: low",), created_at=now, escalation=b"request-bytes", deadline_at=now + deadline_s,
    )
    return trace_id


def verdict(trace_id: str, top: int = 1, status: ResultStatus = ResultStatus.SUCCESS) -> EscalationResult:
    final = pred(top, 0.99) if status is ResultStatus.SUCCESS else None
    return EscalationResult(trace_id, "cam-1", status, (final,) if final else (), final, error="" if final else "boom")


def test_escalation_writes_trace_and_outbox_row_together(store):
    trace_id = escalate(store)
    (row,) = store.outbox()
    assert row.trace_id == trace_id and row.payload == b"request-bytes" and row.status is OutboxStatus.QUEUED
    assert store.trace(trace_id).state is TraceState.PENDING_CLOUD


def test_a_failed_write_leaves_neither_row(store):
    trace_id = escalate(store)
    with pytest.raises(StoreError):  # same trace id again: the trace insert fails, so no second outbox row
        store.record_trace(
            trace_id, pending_machine(), source_id="cam0", frame_index=1, truth=None, prediction=pred(0),
            reasons=(), created_at=101.0, escalation=b"other", deadline_at=106.0,
        )
    assert [r.payload for r in store.outbox()] == [b"request-bytes"]


def test_rows_survive_a_restart(tmp_path):
    path = tmp_path / "edge.db"
    first = EdgeStore(path)
    first.open()
    trace_id = escalate(first)
    first.close()
    again = EdgeStore(path)
    again.open()
    assert [r.trace_id for r in again.due(now=200.0)] == [trace_id]
    again.close()


def test_store_is_wal_and_committed_for_other_readers(tmp_path, store):
    trace_id = escalate(store)
    reader = sqlite3.connect(store.path)
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reader.execute("SELECT trace_id FROM outbox").fetchall() == [(trace_id,)]


def test_retry_moves_the_row_out_of_the_due_window(store):
    trace_id = escalate(store)
    store.mark_retry(trace_id, "UNAVAILABLE", next_attempt_at=150.0)
    assert store.due(now=149.0) == []
    (row,) = store.due(now=150.0)
    assert row.attempts == 1 and row.last_error == "UNAVAILABLE"


def test_sent_rows_are_not_sent_again_and_failed_rows_are_kept(store):
    a, b = escalate(store), escalate(store)
    store.mark_sent(a)
    store.mark_failed(b, "INVALID_ARGUMENT")
    assert store.due(now=1e12) == []
    assert {r.trace_id: r.status for r in store.outbox()} == {a: OutboxStatus.SENT, b: OutboxStatus.FAILED}


def test_verdict_completes_the_trace_exactly_once(store):
    trace_id = escalate(store)
    assert store.apply_result(verdict(trace_id), now=101.0) is VerdictOutcome.COMPLETED
    assert store.apply_result(verdict(trace_id), now=102.0) is VerdictOutcome.DUPLICATE
    trace = store.trace(trace_id)
    assert trace.state is TraceState.COMPLETE
    assert (trace.local_label, trace.cloud_label, trace.final_label) == ("0", "1", "1")
    assert [t.target for t in trace.history].count(TraceState.COMPLETE) == 1
    assert store.outbox() == []


def test_deadline_falls_back_to_the_local_answer(store):
    trace_id = escalate(store, now=100.0, deadline_s=5.0)
    assert store.expire(now=104.9) == []
    assert store.expire(now=105.0) == [trace_id]
    trace = store.trace(trace_id)
    assert trace.state is TraceState.FALLBACK_COMPLETE and trace.final_label == "0"
    assert [t.target for t in trace.history][-2:] == [TraceState.TIMED_OUT, TraceState.FALLBACK_COMPLETE]


def test_late_verdict_is_recorded_beside_the_fallback(store):
    trace_id = escalate(store)
    store.expire(now=1e12)
    assert store.apply_result(verdict(trace_id, top=2), now=2e12) is VerdictOutcome.LATE
    trace = store.trace(trace_id)
    assert trace.state is TraceState.FALLBACK_COMPLETE
    assert (trace.local_label, trace.cloud_label, trace.final_label) == ("0", "2", "2")
    assert "late cloud verdict" in trace.history[-1].reason


def test_hub_failure_falls_back_at_once(store):
    trace_id = escalate(store)
    assert store.apply_result(verdict(trace_id, status=ResultStatus.FAILED), now=101.0) is VerdictOutcome.FAILED
    trace = store.trace(trace_id)
    assert trace.state is TraceState.FALLBACK_COMPLETE and trace.final_label == "0"
    assert "FAILED: boom" in trace.history[-2].reason
    assert store.outbox() == []


def test_result_for_an_unknown_trace_changes_nothing(store):
    assert store.apply_result(verdict(new_trace_id()), now=1.0) is VerdictOutcome.UNKNOWN_TRACE


def test_unresolved_counts_only_pending_traces(store):
    escalate(store)
    done = escalate(store)
    store.apply_result(verdict(done), now=101.0)
    assert store.unresolved() == 1


def test_closed_store_raises_a_store_error(tmp_path):
    s = EdgeStore(tmp_path / "x.db")
    with pytest.raises(StoreError, match="not open"):
        s.due(now=0.0)
