"""The device store: traces and the outbox in real SQLite files."""

import sqlite3

import pytest

from edge.errors import StoreError
from edge.judge import TraceMachine, TraceState
from edge.outbox import EdgeStore, OutboxLimits, OutboxStatus, VerdictOutcome
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


def escalate(
    store: EdgeStore,
    now: float = 100.0,
    deadline_s: float = 5.0,
    truth: str = "1",
    payload: bytes = b"request-bytes",
    priority: int = 0,
) -> str:
    trace_id = new_trace_id()
    store.record_trace(
        trace_id,
        pending_machine(),
        source_id="cam0",
        frame_index=0,
        truth=truth,
        prediction=pred(0),
        reasons=("confidence: low",),
        created_at=now,
        escalation=payload,
        deadline_at=now + deadline_s,
        priority=priority,
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
            trace_id,
            pending_machine(),
            source_id="cam0",
            frame_index=1,
            truth=None,
            prediction=pred(0),
            reasons=(),
            created_at=101.0,
            escalation=b"other",
            deadline_at=106.0,
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


def test_accepted_rows_are_not_sent_again_and_failed_rows_move_to_the_failed_table(store):
    a, b = escalate(store), escalate(store)
    store.mark_sent(a)
    store.mark_failed(b, "INVALID_ARGUMENT", now=120.0)
    assert store.due(now=1e12) == []
    assert {r.trace_id: r.status for r in store.outbox()} == {a: OutboxStatus.ACCEPTED}
    (failed,) = store.failed()
    assert (failed.trace_id, failed.reason, failed.attempts, failed.payload) == (
        b,
        "INVALID_ARGUMENT",
        1,
        b"request-bytes",
    )
    # No verdict can come for a refused escalation: the local answer stands at once, not at the deadline.
    refused = store.trace(b)
    assert refused.state is TraceState.FALLBACK_COMPLETE and "refused the escalation" in refused.history[-2].reason


def test_replay_requeues_failed_rows_as_new_sends(store):
    a, b = escalate(store), escalate(store)
    store.mark_failed(a, "INVALID_ARGUMENT", now=120.0)
    store.mark_failed(b, "INVALID_ARGUMENT", now=121.0)
    assert store.replay(now=500.0, trace_ids=[b]) == [b]
    assert [f.trace_id for f in store.failed()] == [a]
    (row,) = store.due(now=500.0)
    assert (row.trace_id, row.attempts, row.enqueued_at) == (b, 0, 500.0)
    assert store.replay(now=501.0) == [a] and store.failed() == []


def test_higher_priority_is_sent_first(store):
    low, high = escalate(store, now=100.0, priority=1), escalate(store, now=101.0, priority=90)
    assert [r.trace_id for r in store.due(now=200.0)] == [high, low]


def bounded(tmp_path, **limits) -> EdgeStore:
    s = EdgeStore(tmp_path / "bounded.db", limits=OutboxLimits(**limits))
    s.open()
    return s


def test_a_dropped_row_is_reported_and_marked_even_when_its_trace_had_fallen_back(tmp_path):
    """Found by the kill -9 soak: rows whose traces had fallen back at their deadline were dropped with no log,
    no metric and no mark, so their late verdicts never came and nothing said why."""
    store = bounded(tmp_path, max_rows=2, on_full="drop_oldest")
    a, b = escalate(store, now=100.0, deadline_s=1.0), escalate(store, now=101.0)
    assert store.expire(now=101.5) == [a]  # a's deadline passed: it stands on the local answer, row kept
    trace_id = new_trace_id()
    dropped = store.record_trace(
        trace_id,
        pending_machine(),
        source_id="cam0",
        frame_index=1,
        truth="1",
        prediction=pred(0),
        reasons=(),
        created_at=102.0,
        escalation=b"request-bytes",
        deadline_at=107.0,
    )
    assert dropped.rows == (a,) and dropped.fell_back == ()  # dropped, and said so, though no answer changed
    with sqlite3.connect(tmp_path / "bounded.db") as conn:
        (why,) = conn.execute("SELECT dropped FROM traces WHERE trace_id = ?", (a,)).fetchone()
    assert why == "escalation dropped: outbox full (on_full drop_oldest)"
    assert [r.trace_id for r in store.outbox()] == [b, trace_id]


def test_drop_oldest_makes_room_and_the_dropped_trace_falls_back(tmp_path):
    store = bounded(tmp_path, max_rows=2, on_full="drop_oldest")
    a, b = escalate(store, now=100.0), escalate(store, now=101.0)
    assert store.admission(13, priority=0) is None
    c = escalate(store, now=102.0)
    assert [r.trace_id for r in store.outbox()] == [b, c]
    dropped = store.trace(a)
    assert dropped.state is TraceState.FALLBACK_COMPLETE and dropped.final_label == "0"
    assert "outbox full (on_full drop_oldest)" in dropped.history[-2].reason
    assert store.depth().rows == 2


def test_drop_lowest_priority_keeps_the_urgent_rows(tmp_path):
    store = bounded(tmp_path, max_rows=2, on_full="drop_lowest_priority")
    urgent, low = escalate(store, now=100.0, priority=80), escalate(store, now=101.0, priority=5)
    assert store.admission(13, priority=1) is not None  # lower than everything queued: refused
    escalate(store, now=102.0, priority=50)
    assert {r.trace_id for r in store.outbox()} >= {urgent}
    assert low not in {r.trace_id for r in store.outbox()}


def test_reject_new_keeps_the_queue(tmp_path):
    store = bounded(tmp_path, max_rows=1, on_full="reject_new")
    escalate(store)
    assert "reject_new" in store.admission(13, priority=99)


def test_byte_bound_counts_payloads_and_survives_a_restart(tmp_path):
    store = bounded(tmp_path, max_bytes=100, on_full="drop_oldest")
    first = escalate(store, payload=b"x" * 60)
    escalate(store, payload=b"y" * 30)
    assert store.depth().bytes == 90
    escalate(store, payload=b"z" * 30)  # 120 > 100: the oldest goes
    assert first not in {r.trace_id for r in store.outbox()} and store.depth().bytes == 60
    store.close()
    reopened = bounded(tmp_path, max_bytes=100)
    assert (reopened.depth().rows, reopened.depth().bytes) == (2, 60)
    assert "larger than the whole outbox" in reopened.admission(101, priority=0)


def test_ttl_moves_stale_escalations_to_the_failed_table(store):
    old, new = escalate(store, now=100.0), escalate(store, now=5000.0)
    assert store.expire_outbox(now=4000.0, ttl_s=3600.0) == [old]
    assert [r.trace_id for r in store.outbox()] == [new]
    (failed,) = store.failed()
    assert failed.trace_id == old and failed.reason.startswith("expired")
    assert store.trace(old).state is TraceState.FALLBACK_COMPLETE


def test_retention_deletes_old_finished_traces_but_not_pending_ones(store):
    done = escalate(store, now=100.0)
    store.apply_result(verdict(done), now=101.0)
    pending = escalate(store, now=100.0)
    assert store.prune(now=100.0 + 8 * 86400, trace_retention_s=7 * 86400, failed_retention_s=30 * 86400) == (1, 0)
    assert store.trace(done) is None and store.trace(pending) is not None


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
    assert store.next_deadline() == 105.0
    assert store.expire(now=104.9) == []
    assert store.expire(now=105.0) == [trace_id]
    assert store.expire(now=200.0) == [] and store.next_deadline() is None  # dealt with once
    assert [r.trace_id for r in store.outbox()] == [trace_id]  # the row stays for a late verdict
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


def test_a_version_1_store_is_migrated(tmp_path):
    """Version 1 had no priority column and kept permanent failures in the outbox as FAILED."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE outbox (trace_id TEXT PRIMARY KEY, payload BLOB NOT NULL, status TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at FLOAT NOT NULL, enqueued_at FLOAT NOT NULL,"
        " last_error TEXT)"
    )
    conn.executemany(
        "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            ("a" * 32, b"queued", "QUEUED", 0, 1.0, 1.0, None),
            ("b" * 32, b"failed", "FAILED", 1, 2.0, 2.0, "INVALID_ARGUMENT"),
        ],
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    store = EdgeStore(path)
    store.open()
    assert [(r.trace_id, r.priority) for r in store.outbox()] == [("a" * 32, 0)]
    assert [(f.trace_id, f.reason) for f in store.failed()] == [("b" * 32, "INVALID_ARGUMENT")]
    assert store.depth().rows == 1
    store.close()


def test_replay_command_lists_and_requeues(tmp_path, capsys):
    import yaml

    from tandem.cli import main

    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "cam-1",
                "state_path": str(tmp_path / "edge.db"),
                "source": {"kind": "camera"},
                "detector": {"model_path": "m.onnx"},
            }
        )
    )
    store = EdgeStore(tmp_path / "edge.db")
    store.open()
    trace_id = escalate(store)
    store.mark_failed(trace_id, "INVALID_ARGUMENT", now=120.0)
    store.close()
    assert main(["edge", "replay", "--config", str(config)]) == 0
    assert f"{trace_id}  attempts 1" in capsys.readouterr().out
    assert main(["edge", "replay", "--config", str(config), "f" * 32]) == 1  # unknown id: said so
    assert main(["edge", "replay", "--config", str(config), trace_id]) == 0
    store.open()
    assert [r.trace_id for r in store.outbox()] == [trace_id] and store.failed() == []
    store.close()


def test_local_traces_are_grouped_and_an_escalation_is_written_at_once(tmp_path):
    store = EdgeStore(tmp_path / "grouped.db", local_batch=3, local_flush_s=60.0)
    store.open()

    def on_disk() -> int:
        conn = sqlite3.connect(tmp_path / "grouped.db")
        try:
            return conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0]
        finally:
            conn.close()

    def local() -> None:
        m = TraceMachine()
        for s in (TraceState.INFERRED, TraceState.JUDGED, TraceState.COMPLETE):
            m.advance(s, s.value, at=100.0)
        store.record_trace(
            new_trace_id(),
            m,
            source_id="cam0",
            frame_index=0,
            truth=None,
            prediction=pred(0, 0.99),
            reasons=(),
            created_at=100.0,
        )

    local()
    local()
    assert on_disk() == 0
    local()  # the third fills the group
    assert on_disk() == 3
    local()
    escalate(store)  # the waiting local trace goes down with the escalation, in its transaction
    assert on_disk() == 5
    local()
    store.close()  # and close writes what is left
    assert on_disk() == 6


def test_a_relayed_row_is_due_again_until_the_hub_confirms_it(store):
    a = escalate(store, now=100.0)
    store.mark_sent(a, resend_at=150.0)
    (row,) = store.outbox()
    assert (row.status, row.attempts, row.relays) == (OutboxStatus.SENT, 1, 1)
    assert store.due(now=149.0) == [] and store.next_due_at() == 150.0
    assert [r.trace_id for r in store.due(now=150.0)] == [a]
    assert store.mark_accepted(a) and not store.mark_accepted(a)  # a repeated ack changes nothing
    assert store.due(now=1e12) == [] and store.next_due_at() is None


def test_a_confirmation_that_beats_the_send_bookkeeping_keeps_the_row_accepted(store):
    """The hub's ack can arrive (paho's thread) before the sender records its send: no resend follows."""
    a = escalate(store, now=100.0)
    assert store.mark_accepted(a)
    store.mark_sent(a, resend_at=150.0)
    assert store.outbox()[0].status is OutboxStatus.ACCEPTED and store.due(now=1e12) == []


def test_a_version_3_store_sends_its_sent_rows_once_more(tmp_path):
    """Up to version 3 SENT meant done, even when only the broker had the row: such rows are sent again."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE traces (trace_id TEXT PRIMARY KEY, state TEXT NOT NULL, source_id TEXT, frame_index INTEGER,
          truth TEXT, local_label TEXT, local_confidence FLOAT, local_prediction TEXT, cloud_label TEXT,
          cloud_confidence FLOAT, cloud_result TEXT, final_label TEXT, reasons TEXT, created_at FLOAT NOT NULL,
          escalated_at FLOAT, deadline_at FLOAT, verdict_at FLOAT, history TEXT NOT NULL);
        CREATE TABLE outbox (trace_id TEXT PRIMARY KEY, payload BLOB NOT NULL, status TEXT NOT NULL,
          attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at FLOAT NOT NULL, enqueued_at FLOAT NOT NULL,
          last_error TEXT, priority INTEGER NOT NULL DEFAULT 0, deadline_at FLOAT);
        INSERT INTO outbox VALUES ('a', x'01', 'SENT', 1, 10.0, 5.0, NULL, 0, NULL);
        INSERT INTO outbox VALUES ('b', x'02', 'QUEUED', 0, 20.0, 6.0, NULL, 0, NULL);
        PRAGMA user_version = 3;
        """
    )
    conn.close()
    store = EdgeStore(path)
    store.open()
    try:
        assert [(r.trace_id, r.status, r.relays) for r in store.due(now=30.0)] == [
            ("a", OutboxStatus.SENT, 0),
            ("b", OutboxStatus.QUEUED, 0),
        ]
    finally:
        store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (4,)
