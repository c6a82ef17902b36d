"""The trace table: each frame's trace, its state and its whole transition history (a JSON list), so reading
one row tells a trace's story.

Traces that escalate nothing are written in groups (at most ``local_batch`` rows or ``local_flush_s`` old,
and by any other write transaction first); 1 writes each at once. While writes fail (a full disk), up to
MAX_PENDING_LOCAL grouped traces wait in memory; older ones go, and are counted.

``fall_back`` is the one place a waiting trace gives up on the cloud: PENDING_CLOUD -> TIMED_OUT ->
FALLBACK_COMPLETE, the local answer standing, for whichever reason (its deadline, a refusal, an expired or
dropped escalation, a FAILED result).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any, Optional

from edge.judge.states import TERMINAL, TraceMachine, TraceState, Transition
from edge.outbox.database import Database, Participant
from edge.outbox.records import (
    TraceRecord,
    VerdictOutcome,
    boxes_from,
    boxes_json,
    history_json,
    machine_from,
    prediction_json,
    reasons_json,
)
from protocol.messages import EscalationResult, Prediction, ResultStatus

_TRACE_COLUMNS = (
    "trace_id, state, source_id, frame_index, truth, local_label, local_confidence, local_prediction, final_label,"
    " reasons, created_at, escalated_at, deadline_at, history"
)
_INSERT_TRACE = f"INSERT INTO traces ({_TRACE_COLUMNS}) VALUES ({', '.join('?' * 14)})"
MAX_PENDING_LOCAL = 4096  # grouped local traces kept in memory while writes fail (a full disk); older ones go

TraceRow = tuple[Any, ...]


class TraceStore(Participant):
    def __init__(self, db: Database, *, local_batch: int = 1, local_flush_s: float = 0.0) -> None:
        self._db = db
        self._local_batch = local_batch
        self._local_flush_s = local_flush_s
        self._lock = threading.Lock()  # the grouped traces; taken after the database's lock, never before it
        self._pending: list[TraceRow] = []
        self._pending_since = 0.0
        self._in_flight: list[TraceRow] = []  # grouped traces riding in the current transaction
        self.local_traces_dropped = 0  # grouped local traces dropped while writes failed (MAX_PENDING_LOCAL)
        db.join(self)

    # -- taking part in every write transaction ------------------------------------------------------------

    def begin(self, conn: sqlite3.Connection) -> None:
        """Grouped local traces ride along with whatever is written next."""
        with self._lock:
            self._in_flight, self._pending = self._pending, []
        if self._in_flight:
            conn.executemany(_INSERT_TRACE, self._in_flight)

    def committed(self) -> None:
        self._in_flight = []

    def rolled_back(self) -> None:
        """Grouped traces a failed transaction did not write wait for the next one, up to MAX_PENDING_LOCAL
        (the oldest go first: confident answers, no escalation among them)."""
        with self._lock:
            self._pending = self._in_flight + self._pending
            excess = len(self._pending) - MAX_PENDING_LOCAL
            if excess > 0:
                del self._pending[:excess]
                self.local_traces_dropped += excess
        self._in_flight = []

    @property
    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    # -- writes ----------------------------------------------------------------------------------------------

    @staticmethod
    def row(
        trace_id: str,
        machine: TraceMachine,
        *,
        source_id: str,
        frame_index: int,
        truth: Optional[str],
        prediction: Optional[Prediction],
        reasons: tuple[str, ...],
        created_at: float,
        escalated: bool,
        deadline_at: Optional[float],
    ) -> TraceRow:
        final = prediction.label if prediction and machine.state is TraceState.COMPLETE else None
        return (
            trace_id,
            machine.state.value,
            source_id,
            frame_index,
            truth,
            prediction.label if prediction else None,
            prediction.confidence if prediction else None,
            prediction_json(prediction) if prediction else None,
            final,
            reasons_json(reasons),
            created_at,
            created_at if escalated else None,
            deadline_at,
            history_json(machine),
        )

    def add_local(self, row: TraceRow) -> bool:
        """Group a trace that escalates nothing; True when the group is due to be written (then ``flush``)."""
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(row)
            return (
                len(self._pending) >= self._local_batch or time.monotonic() - self._pending_since >= self._local_flush_s
            )

    @property
    def groups_local(self) -> bool:
        return self._local_batch > 1

    @staticmethod
    def insert(conn: sqlite3.Connection, row: TraceRow) -> None:
        conn.execute(_INSERT_TRACE, row)

    @staticmethod
    def mark_dropped(conn: sqlite3.Connection, trace_id: str, reason: str) -> None:
        """Said on the trace whatever its state: one that fell back at its deadline would otherwise just never
        get its late verdict, with nothing to tell why."""
        conn.execute("UPDATE traces SET dropped = ? WHERE trace_id = ?", (reason, trace_id))

    @staticmethod
    def fall_back(conn: sqlite3.Connection, trace_id: str, reason: str, now: float) -> bool:
        """A PENDING_CLOUD trace gives up on the cloud: the local answer stands now. True if it changed."""
        row = conn.execute("SELECT state, history, local_label FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
        if row is None or row[0] != TraceState.PENDING_CLOUD.value:
            return False
        machine = machine_from(row[0], row[1])
        _advance_to_fallback(machine, reason, row[2], now)
        conn.execute(
            "UPDATE traces SET state = ?, history = ?, final_label = ? WHERE trace_id = ?",
            (machine.state.value, history_json(machine), row[2], trace_id),
        )
        return True

    @staticmethod
    def apply_result(conn: sqlite3.Connection, result: EscalationResult, now: float) -> VerdictOutcome:
        """Reconcile a hub result with its trace, exactly once per trace_id."""
        row = conn.execute(
            "SELECT state, history, local_label, cloud_label FROM traces WHERE trace_id = ?", (result.trace_id,)
        ).fetchone()
        if row is None:
            return VerdictOutcome.UNKNOWN_TRACE
        state, history, local_label, cloud_label = row
        machine = machine_from(state, history)
        if cloud_label is not None or machine.state is TraceState.COMPLETE:
            return VerdictOutcome.DUPLICATE
        if result.status is not ResultStatus.SUCCESS or result.final is None:
            if machine.state is TraceState.PENDING_CLOUD:
                reason = f"hub answered {result.status.name}: {result.error or 'no reason given'}"
                _advance_to_fallback(machine, reason, local_label, now)
            outcome = VerdictOutcome.FAILED
            updates: dict[str, Any] = {"final_label": local_label}
        else:
            final = result.final
            if machine.state is TraceState.PENDING_CLOUD:
                machine.advance(TraceState.COMPLETE, f"cloud verdict {final.label} ({final.confidence:.3f})", now)
                outcome = VerdictOutcome.COMPLETED
            else:
                machine.advance(
                    TraceState.FALLBACK_COMPLETE, f"late cloud verdict {final.label} replaces {local_label}", now
                )
                outcome = VerdictOutcome.LATE
            updates = {"cloud_label": final.label, "cloud_confidence": final.confidence, "final_label": final.label}
        updates.update(
            state=machine.state.value,
            history=history_json(machine),
            verdict_at=now,
            cloud_result=json.dumps(
                {
                    "status": result.status.name,
                    "error": result.error,
                    "timings": [[t.hop, t.ms] for t in result.timings],
                    **_boxes(result),
                }
            ),
        )
        conn.execute(
            f"UPDATE traces SET {', '.join(f'{k} = ?' for k in updates)} WHERE trace_id = ?",
            (*updates.values(), result.trace_id),
        )
        return outcome

    @staticmethod
    def prune(conn: sqlite3.Connection, created_before: float) -> int:
        """Delete finished traces created before ``created_before`` whose escalation is settled; how many."""
        return int(
            conn.execute(
                f"DELETE FROM traces WHERE created_at <= ? AND state IN ({', '.join('?' * len(TERMINAL))})"
                " AND trace_id NOT IN (SELECT trace_id FROM outbox) AND trace_id NOT IN (SELECT trace_id FROM failed)",
                (created_before, *(s.value for s in TERMINAL)),
            ).rowcount
        )

    # -- reads (through a write transaction, so grouped traces are written first and seen) ------------------

    def trace(self, trace_id: str) -> Optional[TraceRecord]:
        rows = self.traces("trace_id = ?", (trace_id,))
        return rows[0] if rows else None

    def traces(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[TraceRecord]:
        with self._db.write() as conn:
            rows = conn.execute(
                "SELECT trace_id, state, source_id, frame_index, truth, local_label, local_confidence, cloud_label,"
                " cloud_confidence, final_label, reasons, created_at, escalated_at, verdict_at, history,"
                " local_prediction, cloud_result"
                f" FROM traces WHERE {where} ORDER BY created_at, frame_index",
                params,
            ).fetchall()
        return [
            TraceRecord(
                trace_id=r[0],
                state=TraceState(r[1]),
                source_id=r[2],
                frame_index=r[3],
                truth=r[4],
                local_label=r[5],
                local_confidence=r[6],
                cloud_label=r[7],
                cloud_confidence=r[8],
                final_label=r[9],
                reasons=tuple(json.loads(r[10] or "[]")),
                created_at=r[11],
                escalated_at=r[12],
                verdict_at=r[13],
                history=tuple(Transition.from_json(t) for t in json.loads(r[14])),
                local_boxes=boxes_from(r[15]),
                cloud_boxes=boxes_from(r[16]),
            )
            for r in rows
        ]

    def unresolved(self) -> int:
        """Escalated traces that have neither a verdict nor a fallback."""
        with self._db.write() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM traces WHERE state NOT IN (?, ?, ?)", tuple(s.value for s in TERMINAL)
            ).fetchone()
        return int(n)


def _advance_to_fallback(machine: TraceMachine, reason: str, local_label: Optional[str], now: float) -> None:
    machine.advance(TraceState.TIMED_OUT, reason, now)
    machine.advance(TraceState.FALLBACK_COMPLETE, f"local answer {local_label} stands", now)


def _boxes(result: EscalationResult) -> dict[str, Any]:
    """The verdict's boxes, for the trace's cloud_result (a detector's answer is its boxes)."""
    if result.final is None or not result.final.boxes:
        return {}
    return {"boxes": json.loads(boxes_json(result.final.boxes))}
