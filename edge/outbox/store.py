"""SQLite store for traces and the escalation outbox (WAL; one writer connection).

A trace row holds the trace's state and its whole transition history (a JSON
list), so reading one row tells a trace's story. An outbox row holds the
serialized EscalationRequest until the hub's verdict arrives:

    QUEUED --send ok--> SENT --verdict--> (deleted)
    QUEUED --send failed, retryable--> QUEUED (attempts + 1, next_attempt_at later)
    QUEUED --send failed, permanent--> FAILED (kept for an operator)

Every method commits before it returns; a caller that got a return value can
rely on the row being on disk (to the ``synchronous`` level configured).
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import sqlite_utils

from edge.errors import StoreError
from edge.judge.states import TERMINAL, TraceMachine, TraceState, Transition
from protocol.messages import EscalationResult, Prediction, ResultStatus

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class OutboxStatus(str, enum.Enum):
    QUEUED = "QUEUED"
    SENT = "SENT"
    FAILED = "FAILED"


class VerdictOutcome(enum.Enum):
    """What applying a hub result did to its trace."""

    COMPLETED = "completed"  # PENDING_CLOUD -> COMPLETE with the cloud's answer
    LATE = "late"  # the trace had fallen back; the cloud's answer now stands beside it
    FAILED = "failed"  # the hub could not answer; the trace fell back at once
    DUPLICATE = "duplicate"  # the trace already had a verdict; nothing changed
    UNKNOWN_TRACE = "unknown_trace"  # no such trace on this device


@dataclass(frozen=True)
class TraceRecord:
    trace_id: str
    state: TraceState
    source_id: str
    frame_index: int
    truth: Optional[str]
    local_label: Optional[str]
    local_confidence: Optional[float]
    cloud_label: Optional[str]
    cloud_confidence: Optional[float]
    final_label: Optional[str]
    reasons: tuple[str, ...]
    created_at: float
    escalated_at: Optional[float]
    verdict_at: Optional[float]
    history: tuple[Transition, ...]


@dataclass(frozen=True)
class OutboxRow:
    trace_id: str
    payload: bytes
    status: OutboxStatus
    attempts: int
    next_attempt_at: float
    enqueued_at: float
    last_error: Optional[str]


class EdgeStore:
    """Traces and the outbox. Thread-safe: one connection, one lock, short transactions."""

    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._create_schema(sqlite_utils.Database(conn))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the device store {self.path}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @staticmethod
    def _create_schema(db: sqlite_utils.Database) -> None:
        db["traces"].create(
            {
                "trace_id": str,
                "state": str,
                "source_id": str,
                "frame_index": int,
                "truth": str,
                "local_label": str,
                "local_confidence": float,
                "local_prediction": str,
                "cloud_label": str,
                "cloud_confidence": float,
                "cloud_result": str,
                "final_label": str,
                "reasons": str,
                "created_at": float,
                "escalated_at": float,
                "deadline_at": float,
                "verdict_at": float,
                "history": str,
            },
            pk="trace_id",
            not_null={"state", "history", "created_at"},
            if_not_exists=True,
        )
        db["traces"].create_index(["state", "deadline_at"], if_not_exists=True)
        db["outbox"].create(
            {
                "trace_id": str,
                "payload": bytes,
                "status": str,
                "attempts": int,
                "next_attempt_at": float,
                "enqueued_at": float,
                "last_error": str,
            },
            pk="trace_id",
            not_null={"payload", "status", "attempts", "next_attempt_at", "enqueued_at"},
            defaults={"attempts": 0},
            if_not_exists=True,
        )
        db["outbox"].create_index(["status", "next_attempt_at"], if_not_exists=True)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success, rolled back on any error."""
        with self._lock:
            if self._conn is None:
                raise StoreError("the device store is not open")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"device store {self.path}: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # -- writes from the frame loop -------------------------------------------

    def record_trace(
        self,
        trace_id: str,
        machine: TraceMachine,
        *,
        source_id: str,
        frame_index: int,
        truth: Optional[str],
        prediction: Optional[Prediction],
        reasons: tuple[str, ...],
        created_at: float,
        escalation: Optional[bytes] = None,
        deadline_at: Optional[float] = None,
    ) -> None:
        """Write a new trace; with ``escalation``, its outbox row too, in the same transaction."""
        final = prediction.label if prediction and machine.state is TraceState.COMPLETE else None
        row = {
            "trace_id": trace_id,
            "state": machine.state.value,
            "source_id": source_id,
            "frame_index": frame_index,
            "truth": truth,
            "local_label": prediction.label if prediction else None,
            "local_confidence": prediction.confidence if prediction else None,
            "local_prediction": _prediction_json(prediction) if prediction else None,
            "final_label": final,
            "reasons": json.dumps(list(reasons)),
            "created_at": created_at,
            "escalated_at": created_at if escalation is not None else None,
            "deadline_at": deadline_at,
            "history": _history_json(machine),
        }
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO traces ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )
            if escalation is not None:
                conn.execute(
                    "INSERT INTO outbox (trace_id, payload, status, attempts, next_attempt_at, enqueued_at)"
                    " VALUES (?, ?, ?, 0, ?, ?)",
                    (trace_id, escalation, OutboxStatus.QUEUED.value, created_at, created_at),
                )

    # -- the outbox sender ---------------------------------------------------

    def due(self, now: float, limit: int = 32) -> list[OutboxRow]:
        """QUEUED rows whose next attempt is due, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT trace_id, payload, status, attempts, next_attempt_at, enqueued_at, last_error FROM outbox"
                " WHERE status = ? AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (OutboxStatus.QUEUED.value, now, limit),
            ).fetchall()
        return [OutboxRow(r[0], r[1], OutboxStatus(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def mark_sent(self, trace_id: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = NULL WHERE trace_id = ?",
                (OutboxStatus.SENT.value, trace_id),
            )

    def mark_retry(self, trace_id: str, error: str, next_attempt_at: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE trace_id = ?",
                (error, next_attempt_at, trace_id),
            )

    def mark_failed(self, trace_id: str, error: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ? WHERE trace_id = ?",
                (OutboxStatus.FAILED.value, error, trace_id),
            )

    def next_due_at(self) -> Optional[float]:
        with self._tx() as conn:
            (at,) = conn.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE status = ?", (OutboxStatus.QUEUED.value,)
            ).fetchone()
        return at

    # -- verdicts and deadlines ----------------------------------------------

    def apply_result(self, result: EscalationResult, now: float) -> VerdictOutcome:
        """Reconcile a hub result with its trace, exactly once per trace_id."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT state, history, local_label, cloud_label FROM traces WHERE trace_id = ?", (result.trace_id,)
            ).fetchone()
            if row is None:
                return VerdictOutcome.UNKNOWN_TRACE
            state, history, local_label, cloud_label = row
            machine = _machine(state, history)
            if cloud_label is not None or machine.state is TraceState.COMPLETE:
                return VerdictOutcome.DUPLICATE
            if result.status is not ResultStatus.SUCCESS or result.final is None:
                if machine.state is TraceState.PENDING_CLOUD:
                    reason = f"hub answered {result.status.name}: {result.error or 'no reason given'}"
                    machine.advance(TraceState.TIMED_OUT, reason, now)
                    machine.advance(TraceState.FALLBACK_COMPLETE, f"local answer {local_label} stands", now)
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
                updates = {
                    "cloud_label": final.label,
                    "cloud_confidence": final.confidence,
                    "final_label": final.label,
                }
            updates.update(
                state=machine.state.value,
                history=_history_json(machine),
                verdict_at=now,
                cloud_result=json.dumps(
                    {
                        "status": result.status.name,
                        "error": result.error,
                        "timings": [[t.hop, t.ms] for t in result.timings],
                    }
                ),
            )
            conn.execute(
                f"UPDATE traces SET {', '.join(f'{k} = ?' for k in updates)} WHERE trace_id = ?",
                (*updates.values(), result.trace_id),
            )
            conn.execute("DELETE FROM outbox WHERE trace_id = ?", (result.trace_id,))
            return outcome

    def expire(self, now: float) -> list[str]:
        """PENDING_CLOUD traces past their deadline fall back to the local answer. Returns their ids."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT trace_id, state, history, local_label FROM traces WHERE state = ? AND deadline_at <= ?",
                (TraceState.PENDING_CLOUD.value, now),
            ).fetchall()
            for trace_id, state, history, local_label in rows:
                machine = _machine(state, history)
                machine.advance(TraceState.TIMED_OUT, "no verdict before the deadline", now)
                machine.advance(TraceState.FALLBACK_COMPLETE, f"local answer {local_label} stands", now)
                conn.execute(
                    "UPDATE traces SET state = ?, history = ?, final_label = ? WHERE trace_id = ?",
                    (machine.state.value, _history_json(machine), local_label, trace_id),
                )
        return [r[0] for r in rows]

    def next_deadline(self) -> Optional[float]:
        with self._tx() as conn:
            (at,) = conn.execute(
                "SELECT MIN(deadline_at) FROM traces WHERE state = ?", (TraceState.PENDING_CLOUD.value,)
            ).fetchone()
        return at

    # -- reads ---------------------------------------------------------------

    def trace(self, trace_id: str) -> Optional[TraceRecord]:
        rows = self.traces("trace_id = ?", (trace_id,))
        return rows[0] if rows else None

    def traces(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[TraceRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT trace_id, state, source_id, frame_index, truth, local_label, local_confidence, cloud_label,"
                " cloud_confidence, final_label, reasons, created_at, escalated_at, verdict_at, history"
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
            )
            for r in rows
        ]

    def outbox(self) -> list[OutboxRow]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT trace_id, payload, status, attempts, next_attempt_at, enqueued_at, last_error FROM outbox"
                " ORDER BY enqueued_at"
            ).fetchall()
        return [OutboxRow(r[0], r[1], OutboxStatus(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def unresolved(self) -> int:
        """Escalated traces that have neither a verdict nor a fallback."""
        with self._tx() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM traces WHERE state NOT IN (?, ?, ?)", tuple(s.value for s in TERMINAL)
            ).fetchone()
        return int(n)


def _prediction_json(prediction: Prediction) -> str:
    return json.dumps(
        {
            "model_id": prediction.model_id,
            "model_version": prediction.model_version,
            "labels": list(prediction.labels),
            "scores": list(prediction.scores),
            "inference_ms": prediction.inference_ms,
        }
    )


def _history_json(machine: TraceMachine) -> str:
    return json.dumps([t.to_json() for t in machine.history])


def _machine(state: str, history: str) -> TraceMachine:
    return TraceMachine(TraceState(state), [Transition.from_json(t) for t in json.loads(history)])
