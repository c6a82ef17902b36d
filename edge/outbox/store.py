"""The device's store: the trace table and the outbox (``traces``, ``outbox``) in one SQLite file (WAL; one
writer connection, ``database``), and the operations that must change both at once.

A trace and its escalation are written in one transaction: an escalation is never recorded without its
trace, or the other way round; and a verdict, a refusal, an expiry or a drop changes the outbox row and the
trace together. Every method commits before it returns; a caller that got a return value can rely on the
rows being on disk (to the ``synchronous`` level configured). Thread-safe: one connection, one lock, short
transactions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from edge.judge.states import TraceMachine
from edge.outbox.database import Database
from edge.outbox.outbox import Outbox
from edge.outbox.records import (
    Dropped,
    FailedRow,
    OutboxDepth,
    OutboxLimits,
    OutboxRow,
    TraceRecord,
    VerdictOutcome,
)
from edge.outbox.traces import TraceStore
from protocol.messages import EscalationResult, Prediction


class EdgeStore:
    def __init__(
        self,
        path: Path,
        synchronous: str = "NORMAL",
        limits: Optional[OutboxLimits] = None,
        *,
        local_batch: int = 1,
        local_flush_s: float = 0.0,
    ) -> None:
        self.path = path
        self.database = Database(path, synchronous)
        self.traces_table = TraceStore(self.database, local_batch=local_batch, local_flush_s=local_flush_s)
        self.queue = Outbox(self.database, limits)

    @property
    def limits(self) -> OutboxLimits:
        return self.queue.limits

    @property
    def local_traces_dropped(self) -> int:
        return self.traces_table.local_traces_dropped

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        conn = self.database.open()
        self.queue.load(conn)

    def close(self) -> None:
        if self.database.is_open and self.traces_table.has_pending:
            self.flush()
        self.database.close()

    def flush(self) -> None:
        """Write grouped local traces now (the escalation worker calls this about once a second)."""
        with self.database.write():
            pass

    # -- the frame loop ------------------------------------------------------

    def admission(self, size: int, priority: int) -> Optional[str]:
        return self.queue.admission(size, priority)

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
        priority: int = 0,
    ) -> Dropped:
        """Write a new trace; with ``escalation``, its outbox row too, in the same transaction.

        When the outbox is full, rows are dropped by the on-full strategy to make room (call ``admission``
        first). Every dropped row's trace says so (its ``dropped`` column), and those still waiting fall back
        to the local answer now. Returns what was dropped.
        """
        row = TraceStore.row(
            trace_id,
            machine,
            source_id=source_id,
            frame_index=frame_index,
            truth=truth,
            prediction=prediction,
            reasons=reasons,
            created_at=created_at,
            escalated=escalation is not None,
            deadline_at=deadline_at,
        )
        if escalation is None and self.traces_table.groups_local:
            if self.traces_table.add_local(row):
                self.flush()
            return Dropped()
        with self.database.write() as conn:
            TraceStore.insert(conn, row)
            if escalation is None:
                return Dropped()
            victims = self.queue.victims(conn, len(escalation))
            fell_back = []
            reason = f"escalation dropped: outbox full (on_full {self.limits.on_full})" if victims else ""
            for victim in victims:
                TraceStore.mark_dropped(conn, victim, reason)
                if TraceStore.fall_back(conn, victim, reason, created_at):
                    fell_back.append(victim)
            self.queue.insert(conn, trace_id, escalation, created_at, priority, deadline_at)
        return Dropped(tuple(victims), tuple(fell_back))

    # -- the sender ----------------------------------------------------------

    def due(self, now: float, limit: int = 32) -> list[OutboxRow]:
        return self.queue.due(now, limit)

    def mark_sent(self, trace_id: str, resend_at: Optional[float] = None) -> None:
        self.queue.mark_sent(trace_id, resend_at)

    def mark_accepted(self, trace_id: str) -> bool:
        return self.queue.mark_accepted(trace_id)

    def mark_retry(self, trace_id: str, error: str, next_attempt_at: float) -> None:
        self.queue.mark_retry(trace_id, error, next_attempt_at)

    def next_due_at(self) -> Optional[float]:
        return self.queue.next_due_at()

    def mark_failed(self, trace_id: str, error: str, now: float) -> bool:
        """A permanent failure: the row moves to the failed table, where `tandem edge replay` can requeue it.

        No verdict can come for it, so its trace falls back now rather than at its deadline;
        True if it did (False if the deadline had already passed).
        """
        with self.database.write() as conn:
            self.queue.to_failed(conn, trace_id, error, now, attempt=True)
            return TraceStore.fall_back(conn, trace_id, f"the hub refused the escalation: {error}", now)

    def expire_outbox(self, now: float, ttl_s: float) -> list[str]:
        """Rows enqueued more than ``ttl_s`` ago move to the failed table; returns their trace ids."""
        with self.database.write() as conn:
            ids = Outbox.expired(conn, now, ttl_s)
            reason = f"expired: no verdict within the outbox TTL of {ttl_s:g} s"
            for trace_id in ids:
                self.queue.to_failed(conn, trace_id, reason, now, attempt=False)
                TraceStore.fall_back(conn, trace_id, "escalation expired (outbox TTL)", now)
        return ids

    def failed(self) -> list[FailedRow]:
        return self.queue.failed()

    def replay(self, now: float, trace_ids: Optional[list[str]] = None) -> list[str]:
        return self.queue.replay(now, trace_ids)

    def depth(self) -> OutboxDepth:
        return self.queue.depth()

    def prune(self, now: float, trace_retention_s: float, failed_retention_s: float) -> tuple[int, int]:
        """Delete finished traces and failed rows past their retention; returns how many of each."""
        with self.database.write() as conn:
            traces = TraceStore.prune(conn, now - trace_retention_s)
            failed = Outbox.prune_failed(conn, now - failed_retention_s)
        return traces, failed

    # -- verdicts and deadlines ----------------------------------------------

    def apply_result(self, result: EscalationResult, now: float) -> VerdictOutcome:
        """Reconcile a hub result with its trace, exactly once per trace_id; the outbox row goes."""
        with self.database.write() as conn:
            outcome = TraceStore.apply_result(conn, result, now)
            if outcome not in (VerdictOutcome.UNKNOWN_TRACE, VerdictOutcome.DUPLICATE):
                self.queue.remove(conn, result.trace_id)
            return outcome

    def expire(self, now: float) -> list[str]:
        """PENDING_CLOUD traces past their deadline fall back to the local answer. Returns their ids."""
        with self.database.write() as conn:
            return [
                trace_id
                for trace_id in Outbox.past_deadline(conn, now)
                if TraceStore.fall_back(conn, trace_id, "no verdict before the deadline", now)
            ]

    def next_deadline(self) -> Optional[float]:
        return self.queue.next_deadline()

    # -- reads ---------------------------------------------------------------

    def trace(self, trace_id: str) -> Optional[TraceRecord]:
        return self.traces_table.trace(trace_id)

    def traces(self, where: str = "1", params: tuple[Any, ...] = ()) -> list[TraceRecord]:
        return self.traces_table.traces(where, params)

    def outbox(self) -> list[OutboxRow]:
        return self.queue.rows()

    def unresolved(self) -> int:
        return self.traces_table.unresolved()
