"""The outbox: each escalation's serialized EscalationRequest, from its trace's frame until the hub's verdict.

    QUEUED --sent, the hub acknowledged it in the call (gRPC)--> ACCEPTED --verdict--> (deleted)
    QUEUED --sent, a relay took it (MQTT PUBACK)--> SENT --the hub's EscalationAck--> ACCEPTED
    SENT --no EscalationAck by next_attempt_at--> sent again (the hub deduplicates on trace_id)
    QUEUED | SENT --send failed, retryable--> QUEUED (attempts + 1, next_attempt_at later)
    QUEUED | SENT --send failed, permanent--> the ``failed`` table (kept for `tandem edge replay`)
    any row --verdict--> (deleted);  any row older than the TTL --> the ``failed`` table
    any row, when the outbox is full --> dropped by the on-full strategy (its trace falls back)

The outbox is bounded by rows and by payload bytes; the totals are kept in memory (one writer connection),
changed inside each transaction and counted only when it commits, so an enqueue never counts the table.
Rows are sent highest priority first, then oldest first.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Optional

from edge.outbox.database import Database, Participant
from edge.outbox.records import (
    OUTBOX_COLUMNS,
    FailedRow,
    OutboxDepth,
    OutboxLimits,
    OutboxRow,
    OutboxStatus,
    outbox_row,
)

logger = logging.getLogger(__name__)

# Rows the sender picks up when their next_attempt_at comes: not yet sent, or relayed and not yet confirmed.
_SENDABLE = f"status IN ('{OutboxStatus.QUEUED.value}', '{OutboxStatus.SENT.value}')"


class Outbox(Participant):
    def __init__(self, db: Database, limits: Optional[OutboxLimits] = None) -> None:
        self._db = db
        self.limits = limits or OutboxLimits()
        self._rows = 0  # the outbox's row count and payload bytes, kept in step by every write
        self._bytes = 0
        self._delta = [0, 0]  # changes to both inside the current transaction
        db.join(self)

    def load(self, conn: sqlite3.Connection) -> None:
        """Count what a previous run left (once, when the store opens)."""
        self._rows, self._bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()

    # -- taking part in every write transaction ------------------------------------------------------------

    def begin(self, conn: sqlite3.Connection) -> None:
        self._delta = [0, 0]

    def committed(self) -> None:
        self._rows += self._delta[0]
        self._bytes += self._delta[1]
        self._delta = [0, 0]

    def rolled_back(self) -> None:
        self._delta = [0, 0]

    def _resize(self, rows: int, size: int) -> None:
        self._delta[0] += rows
        self._delta[1] += size

    def _fits(self, size: int) -> bool:
        """Whether one more row of ``size`` bytes fits, counting this transaction's changes."""
        return (
            self._rows + self._delta[0] + 1 <= self.limits.max_rows
            and self._bytes + self._delta[1] + size <= self.limits.max_bytes
        )

    # -- admission and queueing (inside the caller's transaction) ------------------------------------------

    def admission(self, size: int, priority: int) -> Optional[str]:
        """None if an escalation of ``size`` bytes will be queued (perhaps by dropping others), else why not.

        The frame loop asks before it records the trace; it is the only writer that adds rows, so the answer
        holds until its ``record_trace``.
        """
        limits = self.limits
        if size > limits.max_bytes:
            return f"escalation of {size} bytes is larger than the whole outbox ({limits.max_bytes} bytes)"
        if self._rows + 1 <= limits.max_rows and self._bytes + size <= limits.max_bytes:
            return None
        if limits.on_full == "reject_new":
            return f"outbox full ({self._rows} rows, {self._bytes} bytes; on_full reject_new)"
        if limits.on_full == "drop_lowest_priority":
            with self._db.read() as conn:
                (lowest,) = conn.execute("SELECT MIN(priority) FROM outbox").fetchone()
            if lowest is not None and lowest > priority:
                return f"outbox full and every queued escalation outranks this one (priority {priority})"
        return None

    def victims(self, conn: sqlite3.Connection, size: int) -> list[str]:
        """Remove rows by the on-full strategy until ``size`` more bytes fit; return their trace ids."""
        order = "priority, enqueued_at" if self.limits.on_full == "drop_lowest_priority" else "enqueued_at"
        dropped: list[str] = []
        while not self._fits(size):
            victim = conn.execute(f"SELECT trace_id FROM outbox ORDER BY {order} LIMIT 1").fetchone()
            if victim is None:
                break
            self.remove(conn, victim[0])
            dropped.append(victim[0])
        return dropped

    def insert(
        self,
        conn: sqlite3.Connection,
        trace_id: str,
        payload: bytes,
        now: float,
        priority: int = 0,
        deadline_at: Optional[float] = None,
    ) -> None:
        conn.execute(
            "INSERT INTO outbox (trace_id, payload, status, attempts, next_attempt_at, enqueued_at, priority,"
            " deadline_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
            (trace_id, payload, OutboxStatus.QUEUED.value, now, now, priority, deadline_at),
        )
        self._resize(1, len(payload))

    def remove(self, conn: sqlite3.Connection, trace_id: str) -> Optional[tuple[Any, ...]]:
        """Delete one row; return it (as OUTBOX_COLUMNS), or None if there was none."""
        row = conn.execute(f"DELETE FROM outbox WHERE trace_id = ? RETURNING {OUTBOX_COLUMNS}", (trace_id,)).fetchone()
        if row is not None:
            self._resize(-1, -len(row[1]))
        return tuple(row) if row is not None else None

    def to_failed(self, conn: sqlite3.Connection, trace_id: str, reason: str, now: float, attempt: bool) -> None:
        """Move a row to the failed table, where `tandem edge replay` can requeue it."""
        row = self.remove(conn, trace_id)
        if row is None:
            return
        _, payload, _, attempts, _, enqueued_at, _, priority, _ = row
        conn.execute(
            "INSERT OR REPLACE INTO failed (trace_id, payload, priority, attempts, enqueued_at, failed_at, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (trace_id, payload, priority, attempts + int(attempt), enqueued_at, now, reason),
        )

    @staticmethod
    def expired(conn: sqlite3.Connection, now: float, ttl_s: float) -> list[str]:
        return [r[0] for r in conn.execute("SELECT trace_id FROM outbox WHERE enqueued_at <= ?", (now - ttl_s,))]

    @staticmethod
    def past_deadline(conn: sqlite3.Connection, now: float) -> list[str]:
        """Rows whose trace's deadline has come; each deadline is dealt with once (set to NULL here), and the
        row stays for a late verdict. A waiting trace always has its row, and the row carries the deadline: the
        bounded outbox is scanned rather than the traces table indexed (upkeep on every escalation)."""
        ids = [r[0] for r in conn.execute("SELECT trace_id FROM outbox WHERE deadline_at <= ?", (now,))]
        conn.executemany("UPDATE outbox SET deadline_at = NULL WHERE trace_id = ?", [(i,) for i in ids])
        return ids

    # -- the sender --------------------------------------------------------------------------------------------

    def due(self, now: float, limit: int = 32) -> list[OutboxRow]:
        """Rows to send now (QUEUED, or SENT and unconfirmed) whose time has come: highest priority first,
        then the longest waiting."""
        with self._db.read() as conn:
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
        with self._db.write() as conn:
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
        with self._db.write() as conn:
            changed = conn.execute(
                "UPDATE outbox SET status = ? WHERE trace_id = ? AND status != ?",
                (OutboxStatus.ACCEPTED.value, trace_id, OutboxStatus.ACCEPTED.value),
            ).rowcount
        return changed == 1

    def mark_retry(self, trace_id: str, error: str, next_attempt_at: float) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE trace_id = ?",
                (error, next_attempt_at, trace_id),
            )

    def next_due_at(self) -> Optional[float]:
        with self._db.read() as conn:
            (at,) = conn.execute(f"SELECT MIN(next_attempt_at) FROM outbox WHERE {_SENDABLE}").fetchone()
        return float(at) if at is not None else None

    def next_deadline(self) -> Optional[float]:
        with self._db.read() as conn:
            (at,) = conn.execute("SELECT MIN(deadline_at) FROM outbox").fetchone()
        return float(at) if at is not None else None

    # -- failed rows -------------------------------------------------------------------------------------------

    def failed(self) -> list[FailedRow]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT trace_id, payload, priority, attempts, enqueued_at, failed_at, reason FROM failed"
                " ORDER BY failed_at"
            ).fetchall()
        return [FailedRow(*r) for r in rows]

    def replay(self, now: float, trace_ids: Optional[list[str]] = None) -> list[str]:
        """Move failed rows (all, or these) back into the outbox as new sends; returns the ids requeued.

        Stops early, leaving the rest failed, when the outbox is full.
        """
        with self._db.write() as conn:
            rows = conn.execute("SELECT trace_id, payload, priority FROM failed ORDER BY failed_at").fetchall()
            wanted = set(trace_ids) if trace_ids is not None else None
            requeued: list[str] = []
            for trace_id, payload, priority in rows:
                if wanted is not None and trace_id not in wanted:
                    continue
                if not self._fits(len(payload)):
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

    @staticmethod
    def prune_failed(conn: sqlite3.Connection, failed_before: float) -> int:
        return int(conn.execute("DELETE FROM failed WHERE failed_at <= ?", (failed_before,)).rowcount)

    # -- reads -------------------------------------------------------------------------------------------------

    def depth(self) -> OutboxDepth:
        with self._db.read() as conn:
            (oldest,) = conn.execute("SELECT MIN(enqueued_at) FROM outbox").fetchone()
            (failed,) = conn.execute("SELECT COUNT(*) FROM failed").fetchone()
        return OutboxDepth(self._rows, self._bytes, oldest, failed)

    def rows(self) -> list[OutboxRow]:
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY enqueued_at").fetchall()
        return [outbox_row(r) for r in rows]
