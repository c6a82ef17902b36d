"""SQLite store for traces and the escalation outbox (WAL; one writer connection).

A trace row holds the trace's state and its whole transition history (a JSON
list), so reading one row tells a trace's story. An outbox row holds the
serialized EscalationRequest until the hub's verdict arrives:

    QUEUED --sent, the hub acknowledged it in the call (gRPC)--> ACCEPTED --verdict--> (deleted)
    QUEUED --sent, a relay took it (MQTT PUBACK)--> SENT --the hub's EscalationAck--> ACCEPTED
    SENT --no EscalationAck by next_attempt_at--> sent again (the hub deduplicates on trace_id)
    QUEUED | SENT --send failed, retryable--> QUEUED (attempts + 1, next_attempt_at later)
    QUEUED | SENT --send failed, permanent--> the ``failed`` table (kept for `tandem edge replay`)
    any row --verdict--> (deleted);  any row older than the TTL --> the ``failed`` table
    any row, when the outbox is full --> dropped by the on-full strategy (its trace falls back)

The outbox is bounded by rows and by payload bytes; the totals are kept in
memory (one writer connection) so an enqueue never counts the table. Rows are
sent highest priority first, then oldest first.

Every method commits before it returns; a caller that got a return value can
rely on the row being on disk (to the ``synchronous`` level configured).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import sqlite_utils

from edge.errors import StoreError, StoreFull
from edge.judge.states import TERMINAL, TraceMachine, TraceState, Transition
from edge.outbox.records import (
    OUTBOX_COLUMNS,
    Dropped,
    FailedRow,
    OutboxDepth,
    OutboxLimits,
    OutboxRow,
    OutboxStatus,
    TraceRecord,
    VerdictOutcome,
    history_json,
    machine_from,
    outbox_row,
    prediction_json,
    reasons_json,
)
from edge.outbox.schema import create_schema
from protocol.messages import EscalationResult, Prediction, ResultStatus

logger = logging.getLogger(__name__)

_TRACE_COLUMNS = (
    "trace_id, state, source_id, frame_index, truth, local_label, local_confidence, local_prediction, final_label,"
    " reasons, created_at, escalated_at, deadline_at, history"
)
_INSERT_TRACE = f"INSERT INTO traces ({_TRACE_COLUMNS}) VALUES ({', '.join('?' * 14)})"
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, which Python only names from 3.11
MAX_PENDING_LOCAL = 4096  # grouped local traces kept in memory while writes fail (a full disk); older ones go
# Rows the sender picks up when their next_attempt_at comes: not yet sent, or relayed and not yet confirmed.
_SENDABLE = f"status IN ('{OutboxStatus.QUEUED.value}', '{OutboxStatus.SENT.value}')"


class EdgeStore:
    """Traces and the outbox. Thread-safe: one connection, one lock, short transactions."""

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
        self.limits = limits or OutboxLimits()
        # Traces that escalate nothing are written in groups (at most local_batch rows or local_flush_s
        # old, and by any other transaction first); 1 writes each at once.
        self._local_batch = local_batch
        self._local_flush_s = local_flush_s
        self._pending: list[tuple[Any, ...]] = []
        self._pending_since = 0.0
        self._synchronous = synchronous
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        self._rows = 0  # the outbox's row count and payload bytes, kept in step by every write
        self._bytes = 0
        self._delta = [0, 0]  # changes to both inside the current transaction
        self.local_traces_dropped = 0  # grouped local traces dropped while writes failed (MAX_PENDING_LOCAL)

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            create_schema(sqlite_utils.Database(conn))
            self._rows, self._bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the device store {self.path}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None and self._pending:
            self.flush()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success, rolled back on any error.

        Changes to the outbox's size go through ``_resize`` inside the
        transaction and reach the in-memory totals only if it commits.
        """
        with self._lock:
            if self._conn is None:
                raise StoreError("the device store is not open")
            conn = self._conn
            self._delta = [0, 0]
            pending, self._pending = self._pending, []
            try:
                conn.execute("BEGIN IMMEDIATE")
                if pending:  # grouped local traces ride along with whatever is written next
                    conn.executemany(_INSERT_TRACE, pending)
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._requeue(pending)
                kind = StoreFull if _is_full(exc) else StoreError
                raise kind(f"device store {self.path}: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._requeue(pending)
                raise
            self._rows += self._delta[0]
            self._bytes += self._delta[1]

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read outside any write transaction, without the grouped local traces: it works on a full disk, so
        /healthz, the metrics and the sender can still look while nothing can be written."""
        with self._lock:
            if self._conn is None:
                raise StoreError("the device store is not open")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"device store {self.path}: {exc}") from exc

    def _requeue(self, pending: list[tuple[Any, ...]]) -> None:
        """Grouped local traces a failed transaction did not write wait for the next one, up to MAX_PENDING_LOCAL
        (the oldest go first: confident answers, no escalation among them)."""
        self._pending = pending + self._pending
        excess = len(self._pending) - MAX_PENDING_LOCAL
        if excess > 0:
            del self._pending[:excess]
            self.local_traces_dropped += excess

    def _resize(self, rows: int, size: int) -> None:
        self._delta[0] += rows
        self._delta[1] += size

    def _remove_outbox(self, conn: sqlite3.Connection, trace_id: str) -> Optional[tuple[Any, ...]]:
        """Delete one outbox row; return it (as OUTBOX_COLUMNS), or None if there was none."""
        row = conn.execute(f"DELETE FROM outbox WHERE trace_id = ? RETURNING {OUTBOX_COLUMNS}", (trace_id,)).fetchone()
        if row is not None:
            self._resize(-1, -len(row[1]))
        return tuple(row) if row is not None else None

    # -- writes from the frame loop -------------------------------------------

    def admission(self, size: int, priority: int) -> Optional[str]:
        """None if an escalation of ``size`` bytes will be queued (perhaps by dropping others), else why not.

        The frame loop asks before it records the trace; it is the only writer
        that adds rows, so the answer holds until its ``record_trace``.
        """
        limits = self.limits
        if size > limits.max_bytes:
            return f"escalation of {size} bytes is larger than the whole outbox ({limits.max_bytes} bytes)"
        if self._rows + 1 <= limits.max_rows and self._bytes + size <= limits.max_bytes:
            return None
        if limits.on_full == "reject_new":
            return f"outbox full ({self._rows} rows, {self._bytes} bytes; on_full reject_new)"
        if limits.on_full == "drop_lowest_priority":
            with self._read() as conn:
                (lowest,) = conn.execute("SELECT MIN(priority) FROM outbox").fetchone()
            if lowest is not None and lowest > priority:
                return f"outbox full and every queued escalation outranks this one (priority {priority})"
        return None

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

        When the outbox is full, rows are dropped by the on-full strategy to
        make room (call ``admission`` first). Every dropped row's trace says so (its ``dropped`` column),
        and those still waiting fall back to the local answer now. Returns what was dropped.
        """
        final = prediction.label if prediction and machine.state is TraceState.COMPLETE else None
        row = (
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
            created_at if escalation is not None else None,
            deadline_at,
            history_json(machine),
        )
        if escalation is None and self._local_batch > 1:
            with self._lock:
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.append(row)
                due = (
                    len(self._pending) >= self._local_batch
                    or time.monotonic() - self._pending_since >= self._local_flush_s
                )
            if due:
                self.flush()
            return Dropped()
        dropped = Dropped()
        with self._tx() as conn:
            conn.execute(_INSERT_TRACE, row)
            if escalation is not None:
                dropped = self._make_room(conn, len(escalation), created_at)
                conn.execute(
                    "INSERT INTO outbox (trace_id, payload, status, attempts, next_attempt_at, enqueued_at, priority,"
                    " deadline_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
                    (trace_id, escalation, OutboxStatus.QUEUED.value, created_at, created_at, priority, deadline_at),
                )
                self._resize(1, len(escalation))
        return dropped

    def _make_room(self, conn: sqlite3.Connection, size: int, now: float) -> Dropped:
        limits = self.limits
        order = "priority, enqueued_at" if limits.on_full == "drop_lowest_priority" else "enqueued_at"
        rows: list[str] = []
        fell_back: list[str] = []
        reason = f"escalation dropped: outbox full (on_full {limits.on_full})"
        while (
            self._rows + self._delta[0] + 1 > limits.max_rows or self._bytes + self._delta[1] + size > limits.max_bytes
        ):
            victim = conn.execute(f"SELECT trace_id FROM outbox ORDER BY {order} LIMIT 1").fetchone()
            if victim is None:
                break
            self._remove_outbox(conn, victim[0])
            # Said on the trace whatever its state: one that fell back at its deadline would otherwise just
            # never get its late verdict, with nothing to tell why.
            conn.execute("UPDATE traces SET dropped = ? WHERE trace_id = ?", (reason, victim[0]))
            rows.append(victim[0])
            if self._fall_back(conn, victim[0], reason, now):
                fell_back.append(victim[0])
        return Dropped(tuple(rows), tuple(fell_back))

    def _fall_back(self, conn: sqlite3.Connection, trace_id: str, reason: str, now: float) -> bool:
        """A PENDING_CLOUD trace whose escalation is gone: the local answer stands now. True if it changed."""
        row = conn.execute("SELECT state, history, local_label FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
        if row is None or row[0] != TraceState.PENDING_CLOUD.value:
            return False
        machine = machine_from(row[0], row[1])
        machine.advance(TraceState.TIMED_OUT, reason, now)
        machine.advance(TraceState.FALLBACK_COMPLETE, f"local answer {row[2]} stands", now)
        conn.execute(
            "UPDATE traces SET state = ?, history = ?, final_label = ? WHERE trace_id = ?",
            (machine.state.value, history_json(machine), row[2], trace_id),
        )
        return True

    def flush(self) -> None:
        """Write grouped local traces now (the escalation worker calls this about once a second)."""
        with self._tx():
            pass

    # -- the outbox sender ---------------------------------------------------

    def due(self, now: float, limit: int = 32) -> list[OutboxRow]:
        """Rows to send now (QUEUED, or SENT and unconfirmed) whose time has come: highest priority first,
        then the longest waiting."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {_SENDABLE} AND next_attempt_at <= ?"
                " ORDER BY priority DESC, next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [outbox_row(r) for r in rows]

    def mark_sent(self, trace_id: str, resend_at: Optional[float] = None) -> None:
        """One send went out. ``resend_at`` None: the hub acknowledged it in the call, so the row is ACCEPTED.
        Otherwise a relay took it: SENT, and sent again at ``resend_at`` unless the hub confirms it first
        (a confirmation that beat this call here keeps the row ACCEPTED)."""
        with self._tx() as conn:
            if resend_at is None:
                conn.execute(
                    "UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = NULL WHERE trace_id = ?",
                    (OutboxStatus.ACCEPTED.value, trace_id),
                )
                return
            conn.execute(
                "UPDATE outbox SET status = CASE WHEN status = ? THEN status ELSE ? END, attempts = attempts + 1,"
                " relays = relays + 1, last_error = NULL, next_attempt_at = ? WHERE trace_id = ?",
                (OutboxStatus.ACCEPTED.value, OutboxStatus.SENT.value, resend_at, trace_id),
            )

    def mark_accepted(self, trace_id: str) -> bool:
        """The hub's EscalationAck arrived: no more sends, the row waits for its verdict.
        False if there is no such row or it was accepted already (a repeated ack)."""
        with self._tx() as conn:
            changed = conn.execute(
                "UPDATE outbox SET status = ? WHERE trace_id = ? AND status != ?",
                (OutboxStatus.ACCEPTED.value, trace_id, OutboxStatus.ACCEPTED.value),
            ).rowcount
        return changed == 1

    def mark_retry(self, trace_id: str, error: str, next_attempt_at: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE trace_id = ?",
                (error, next_attempt_at, trace_id),
            )

    def mark_failed(self, trace_id: str, error: str, now: float) -> bool:
        """A permanent failure: the row moves to the failed table, where `tandem edge replay` can requeue it.

        No verdict can come for it, so its trace falls back now rather than at its deadline;
        True if it did (False if the deadline had already passed).
        """
        with self._tx() as conn:
            self._to_failed(conn, trace_id, error, now, attempt=True)
            return self._fall_back(conn, trace_id, f"the hub refused the escalation: {error}", now)

    def _to_failed(self, conn: sqlite3.Connection, trace_id: str, reason: str, now: float, attempt: bool) -> None:
        row = self._remove_outbox(conn, trace_id)
        if row is None:
            return
        _, payload, _, attempts, _, enqueued_at, _, priority, _ = row
        conn.execute(
            "INSERT OR REPLACE INTO failed (trace_id, payload, priority, attempts, enqueued_at, failed_at, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (trace_id, payload, priority, attempts + int(attempt), enqueued_at, now, reason),
        )

    def expire_outbox(self, now: float, ttl_s: float) -> list[str]:
        """Rows enqueued more than ``ttl_s`` ago move to the failed table; returns their trace ids."""
        with self._tx() as conn:
            ids = [
                r[0]
                for r in conn.execute("SELECT trace_id FROM outbox WHERE enqueued_at <= ?", (now - ttl_s,)).fetchall()
            ]
            for trace_id in ids:
                self._to_failed(conn, trace_id, f"expired: no verdict within the outbox TTL of {ttl_s:g} s", now, False)
                self._fall_back(conn, trace_id, "escalation expired (outbox TTL)", now)
        return ids

    def failed(self) -> list[FailedRow]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT trace_id, payload, priority, attempts, enqueued_at, failed_at, reason FROM failed"
                " ORDER BY failed_at"
            ).fetchall()
        return [FailedRow(*r) for r in rows]

    def replay(self, now: float, trace_ids: Optional[list[str]] = None) -> list[str]:
        """Move failed rows (all, or these) back into the outbox as new sends; returns the ids requeued.

        Stops early, leaving the rest failed, when the outbox is full.
        """
        with self._tx() as conn:
            rows = conn.execute("SELECT trace_id, payload, priority FROM failed ORDER BY failed_at").fetchall()
            wanted = set(trace_ids) if trace_ids is not None else None
            requeued: list[str] = []
            for trace_id, payload, priority in rows:
                if wanted is not None and trace_id not in wanted:
                    continue
                if (
                    self._rows + self._delta[0] + 1 > self.limits.max_rows
                    or self._bytes + self._delta[1] + len(payload) > self.limits.max_bytes
                ):
                    logger.warning("replay: outbox full; %d failed rows left", len(rows) - len(requeued))
                    break
                conn.execute("DELETE FROM failed WHERE trace_id = ?", (trace_id,))
                # A fresh enqueue time, so the TTL does not expire it again at once.
                conn.execute(
                    "INSERT INTO outbox (trace_id, payload, status, attempts, next_attempt_at, enqueued_at, priority)"
                    " VALUES (?, ?, ?, 0, ?, ?, ?)",
                    (trace_id, payload, OutboxStatus.QUEUED.value, now, now, priority),
                )
                self._resize(1, len(payload))
                requeued.append(trace_id)
        return requeued

    def depth(self) -> OutboxDepth:
        with self._read() as conn:
            (oldest,) = conn.execute("SELECT MIN(enqueued_at) FROM outbox").fetchone()
            (failed,) = conn.execute("SELECT COUNT(*) FROM failed").fetchone()
        return OutboxDepth(self._rows, self._bytes, oldest, failed)

    def prune(self, now: float, trace_retention_s: float, failed_retention_s: float) -> tuple[int, int]:
        """Delete finished traces and failed rows past their retention; returns how many of each."""
        with self._tx() as conn:
            traces = conn.execute(
                f"DELETE FROM traces WHERE created_at <= ? AND state IN ({', '.join('?' * len(TERMINAL))})"
                " AND trace_id NOT IN (SELECT trace_id FROM outbox) AND trace_id NOT IN (SELECT trace_id FROM failed)",
                (now - trace_retention_s, *(s.value for s in TERMINAL)),
            ).rowcount
            failed = conn.execute("DELETE FROM failed WHERE failed_at <= ?", (now - failed_retention_s,)).rowcount
        return traces, failed

    def next_due_at(self) -> Optional[float]:
        with self._read() as conn:
            (at,) = conn.execute(f"SELECT MIN(next_attempt_at) FROM outbox WHERE {_SENDABLE}").fetchone()
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
            machine = machine_from(state, history)
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
                history=history_json(machine),
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
            self._remove_outbox(conn, result.trace_id)
            return outcome

    def expire(self, now: float) -> list[str]:
        """PENDING_CLOUD traces past their deadline fall back to the local answer. Returns their ids.

        A waiting trace always has its outbox row, and the outbox carries the deadline: the bounded
        outbox is scanned rather than the traces table indexed (an index there would be upkeep on
        every escalation). A row whose deadline has been dealt with gets deadline_at NULL; it stays
        for a late verdict.
        """
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT t.trace_id, t.state, t.history, t.local_label FROM outbox o"
                " JOIN traces t ON t.trace_id = o.trace_id WHERE o.deadline_at <= ?",
                (now,),
            ).fetchall()
            expired = []
            for trace_id, state, history, local_label in rows:
                conn.execute("UPDATE outbox SET deadline_at = NULL WHERE trace_id = ?", (trace_id,))
                if state != TraceState.PENDING_CLOUD.value:
                    continue
                machine = machine_from(state, history)
                machine.advance(TraceState.TIMED_OUT, "no verdict before the deadline", now)
                machine.advance(TraceState.FALLBACK_COMPLETE, f"local answer {local_label} stands", now)
                conn.execute(
                    "UPDATE traces SET state = ?, history = ?, final_label = ? WHERE trace_id = ?",
                    (machine.state.value, history_json(machine), local_label, trace_id),
                )
                expired.append(trace_id)
        return expired

    def next_deadline(self) -> Optional[float]:
        with self._read() as conn:
            (at,) = conn.execute("SELECT MIN(deadline_at) FROM outbox").fetchone()
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
        with self._read() as conn:
            rows = conn.execute(f"SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY enqueued_at").fetchall()
        return [outbox_row(r) for r in rows]

    def unresolved(self) -> int:
        """Escalated traces that have neither a verdict nor a fallback."""
        with self._tx() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM traces WHERE state NOT IN (?, ?, ?)", tuple(s.value for s in TERMINAL)
            ).fetchone()
        return int(n)


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: by its code where Python gives it (3.11+), else by SQLite's fixed message for it."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code == _SQLITE_FULL if code is not None else "database or disk is full" in str(exc)
