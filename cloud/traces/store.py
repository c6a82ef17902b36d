"""The hub's trace store (SQLite, WAL): one row per trace_id, the key that makes delivery idempotent.

    PENDING (recorded, acknowledged to the device) -> RUNNING -> SUCCESS | FAILED | TIMED_OUT

Once finished, a row is also the result's delivery queue (``cloud.dispatch.delivery``):
    sends, next_send_at   how often the result went out, and when it goes out again unless acknowledged
    delivered_at          the broker took it (MQTT PUBACK)
    acked_at              the device has it: its ResultAck, a callback's 2xx, or the gRPC response

The request bytes are kept, so a hub that restarts runs what it had
accepted, and the console shows a trace's image; once finished, only the
newest ``console.trace_images_kept`` keep theirs (``forget_requests``). A
result whose next_send_at has passed is sent again. Devices deduplicate on
trace_id, so a repeat is harmless.

hard_examples  escalations whose cloud answer's top label differed from the device's, with the request (image
               and the device's prediction) kept for an operator to confirm or correct the label, and export

Several replicas on one PostgreSQL database (``cloud.database``) share the rows safely:
    owner, lease_until    the replica that runs an unfinished trace, renewed while it runs; a trace whose
                          lease lapsed (its replica died) is claimed by another and run again
    claims                due results and lapsed traces are taken with FOR UPDATE SKIP LOCKED, in batches,
                          so two replicas never take the same row
    finished              each stored result is notified (LISTEN/NOTIFY), so a replica whose gRPC call waits
                          for a trace another replica ran answers it at once
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from cloud.database import Location, database


class TraceStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"


FINISHED = (TraceStatus.SUCCESS, TraceStatus.FAILED, TraceStatus.TIMED_OUT)
# SQL conditions used by several statements (the values are this module's constants, not input).
_FINISHED_SQL = "status IN ({})".format(", ".join(f"'{s.value}'" for s in FINISHED))
_UNACKED_SQL = f"acked_at IS NULL AND {_FINISHED_SQL}"


@dataclass(frozen=True)
class HubTrace:
    trace_id: str
    device_id: str
    status: TraceStatus
    received_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    delivered_at: Optional[float]
    result: Optional[bytes]
    """The EscalationResult as protobuf bytes, once finished."""
    error: Optional[str]
    route: Optional[str] = None
    cost: Optional[float] = None
    acked_at: Optional[float] = None
    sends: int = 0
    next_send_at: Optional[float] = None
    runs: int = 0
    """How often the routing started for it: 1, or more only if a hub restart cut a run short."""


@dataclass(frozen=True)
class HardExample:
    """An escalation the cloud answered differently from the device (top labels), kept for labelling."""

    trace_id: str
    device_id: str
    received_at: float
    edge_label: str
    cloud_label: str
    label: Optional[str] = None
    """What an operator said it is (None: not looked at yet)."""
    labelled_by: Optional[str] = None
    labelled_at: Optional[float] = None


_HARD_COLUMNS = "trace_id, device_id, received_at, edge_label, cloud_label, label, labelled_by, labelled_at"
_COLUMNS = (
    "trace_id, device_id, status, received_at, started_at, finished_at, delivered_at, result, error, route, cost,"
    " acked_at, COALESCE(sends, 0), next_send_at, COALESCE(runs, 0)"
)
_UNFINISHED_SQL = f"status IN ('{TraceStatus.PENDING.value}', '{TraceStatus.RUNNING.value}')"

MIGRATIONS = (
    (
        "CREATE TABLE IF NOT EXISTS traces (trace_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, status TEXT NOT NULL,"
        " request BLOB, received_at REAL NOT NULL, started_at REAL, finished_at REAL, delivered_at REAL, result BLOB,"
        " error TEXT, route TEXT, cost REAL, acked_at REAL, sends INTEGER, next_send_at REAL, runs INTEGER)",
        "CREATE INDEX IF NOT EXISTS idx_traces_status ON traces (status)",
        "CREATE INDEX IF NOT EXISTS idx_traces_next_send_at ON traces (next_send_at)",
        "CREATE INDEX IF NOT EXISTS idx_traces_device_id_received_at ON traces (device_id, received_at)",
    ),
    # Several replicas: which one runs an unfinished trace, and until when that claim holds unless renewed.
    ("ALTER TABLE traces ADD COLUMN owner TEXT", "ALTER TABLE traces ADD COLUMN lease_until REAL"),
    # The console: frames where the cloud disagreed with the device, and the labels operators gave them.
    (
        "CREATE TABLE IF NOT EXISTS hard_examples (trace_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
        " received_at REAL NOT NULL, edge_label TEXT NOT NULL, cloud_label TEXT NOT NULL, request BLOB NOT NULL,"
        " label TEXT, labelled_by TEXT, labelled_at REAL)",
        "CREATE INDEX IF NOT EXISTS idx_hard_examples_received_at ON hard_examples (received_at)",
        # Only the traces that still hold their request (the unfinished, and the newest finished ones): what
        # forget_requests looks through every few seconds, however many traces the store keeps.
        "CREATE INDEX IF NOT EXISTS idx_traces_with_request ON traces (finished_at) WHERE request IS NOT NULL",
    ),
)
# Columns added before migrations existed: a SQLite file written then gains them at open.
_ADDED = (("route", "TEXT"), ("cost", "REAL"), ("acked_at", "REAL"), ("sends", "INTEGER"), ("next_send_at", "REAL"),
          ("runs", "INTEGER"))  # fmt: skip
FINISHED_CHANNEL = "finished"  # notified with the trace_id of every result stored


def _add_early_columns(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(traces)").fetchall()}
    if have:
        for column, kind in _ADDED:
            if column not in have:
                conn.execute(f"ALTER TABLE traces ADD COLUMN {column} {kind}")


class TraceStore:
    """``location``: a SQLite file, or a PostgreSQL database shared by several replicas (``cloud.database``).
    ``owner``: this replica's name on the traces it runs; ``lease_s``: how long its claim on one holds unless
    renewed (``renew``), after which another replica may run it (``claim_unfinished``)."""

    def __init__(self, location: Location, owner: str = "hub", lease_s: float = 20.0) -> None:
        self.db = database(location, "trace store", MIGRATIONS, before_migrations=_add_early_columns)
        self.owner = owner
        self.lease_s = lease_s

    @property
    def shared(self) -> bool:
        """Whether other replicas may use this store at once (PostgreSQL)."""
        return self.db.shared

    def open(self) -> None:
        self.db.open()

    def close(self) -> None:
        self.db.close()

    def _run(self, sql: str, params: Sequence[object] = ()) -> tuple[list[tuple], int]:
        """Execute one statement (autocommit); return its rows and how many rows it changed."""
        with self.db.connection() as conn:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall() if _returns_rows(sql) else []
            return rows, cursor.rowcount

    def _execute(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        return self._run(sql, params)[0]

    def insert_if_absent(self, trace_id: str, device_id: str, request: bytes, now: float) -> bool:
        """Record a new trace as PENDING, claimed by this replica; False if the trace_id is already known."""
        _, changed = self._run(
            "INSERT INTO traces (trace_id, device_id, status, request, received_at, owner, lease_until)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (trace_id) DO NOTHING",
            (trace_id, device_id, TraceStatus.PENDING.value, request, now, self.owner, now + self.lease_s),
        )
        return changed == 1

    def set_running(self, trace_id: str, now: float) -> None:
        self._execute(
            "UPDATE traces SET status = ?, started_at = ?, runs = COALESCE(runs, 0) + 1, owner = ?, lease_until = ?"
            " WHERE trace_id = ?",
            (TraceStatus.RUNNING.value, now, self.owner, now + self.lease_s, trace_id),
        )

    def renew(self, trace_ids: Sequence[str], now: float) -> int:
        """This replica still runs these traces: its claims on them hold for another lease_s."""
        renewed = 0
        for start in range(0, len(trace_ids), 500):
            chunk = trace_ids[start : start + 500]
            _, changed = self._run(
                f"UPDATE traces SET lease_until = ? WHERE owner = ? AND {_UNFINISHED_SQL}"
                f" AND trace_id IN ({', '.join('?' * len(chunk))})",
                (now + self.lease_s, self.owner, *chunk),
            )
            renewed += changed
        return renewed

    def claim_unfinished(self, now: float, limit: int = 1000) -> list[tuple[str, bytes]]:
        """(trace_id, request bytes) of accepted traces with no result whose claim has lapsed (their replica died,
        or stopped before they finished), or is this replica's own; each is now claimed by this replica. Oldest
        first. Several replicas calling at once each get different traces."""
        rows = self._execute(
            "UPDATE traces SET owner = ?, lease_until = ? WHERE trace_id IN (SELECT trace_id FROM traces WHERE"
            f" {_UNFINISHED_SQL} AND (lease_until IS NULL OR lease_until < ? OR owner = ?) ORDER BY received_at"
            f" LIMIT ?{self.db.skip_locked}) RETURNING trace_id, request, received_at",
            (self.owner, now + self.lease_s, now, self.owner, limit),
        )
        return [(r[0], bytes(r[1])) for r in sorted(rows, key=lambda r: r[2])]

    def set_finished(
        self,
        trace_id: str,
        status: TraceStatus,
        result: bytes,
        error: Optional[str],
        now: float,
        route: str = "",
        cost: float = 0.0,
        due_at: Optional[float] = None,
    ) -> None:
        """Record the result, due for sending at due_at (default: now) until ``mark_sent`` sets its next time.
        The replica that stores a result sends it itself, so it passes a due time a little ahead: should it die
        before sending, another replica's ``claim_due`` takes the result then, and never sooner (two replicas
        would both send it). Every replica's ``on_finished`` listeners hear of it."""
        self._execute(
            "UPDATE traces SET status = ?, result = ?, error = ?, finished_at = ?, route = ?, cost = ?,"
            " next_send_at = ?, lease_until = NULL WHERE trace_id = ?",
            (status.value, result, error, now, route or None, cost, now if due_at is None else due_at, trace_id),
        )
        if self.db.shared:
            self.db.notify(FINISHED_CHANNEL, trace_id)

    def on_finished(self, listener: Callable[[str], None]) -> None:
        """``listener(trace_id)`` for each result another replica stores (from a thread of the store's)."""
        self.db.listen(FINISHED_CHANNEL, listener)

    def mark_sent(self, trace_id: str, next_send_at: float) -> None:
        """The result goes out once more (recorded before it leaves, so an ack that beats this call here still
        finds it counted); unless acknowledged by then, it is due again at next_send_at."""
        self._execute(
            "UPDATE traces SET sends = COALESCE(sends, 0) + 1,"
            " next_send_at = CASE WHEN acked_at IS NULL THEN ? ELSE NULL END WHERE trace_id = ?",
            (next_send_at, trace_id),
        )

    def send_now(self, trace_id: str, now: float) -> bool:
        """Make an unacknowledged result due at once (the device asked again). False if there is none to send."""
        _, changed = self._run(
            f"UPDATE traces SET next_send_at = ? WHERE trace_id = ? AND {_UNACKED_SQL}", (now, trace_id)
        )
        return changed == 1

    def stop_sending(self, trace_id: str) -> None:
        """No more sends (out of attempts); the result stays, unacknowledged, for operators to see."""
        self._execute("UPDATE traces SET next_send_at = NULL WHERE trace_id = ?", (trace_id,))

    def mark_delivered(self, trace_id: str, now: float) -> None:
        """The broker's PUBACK for the first send: recorded once (an ack may have recorded it first)."""
        self._execute("UPDATE traces SET delivered_at = ? WHERE trace_id = ? AND delivered_at IS NULL", (now, trace_id))

    def mark_acked(self, trace_id: str, device_id: str, now: float) -> bool:
        """The device has the result: no more sends. False if the trace is unknown, another device's,
        unfinished, or acknowledged already. A result acknowledged before the broker's PUBACK was recorded
        was delivered by then: delivered_at is never later than acked_at."""
        _, changed = self._run(
            "UPDATE traces SET acked_at = ?, next_send_at = NULL,"
            " delivered_at = CASE WHEN delivered_at IS NULL OR delivered_at > ? THEN ? ELSE delivered_at END"
            f" WHERE trace_id = ? AND device_id = ? AND {_UNACKED_SQL}",
            (now, now, now, trace_id, device_id),
        )
        return changed == 1

    def claim_due(self, now: float, hold_s: float, limit: int = 100) -> list[HubTrace]:
        """Finished, unacknowledged results whose next send time has come, oldest first; each is held for this
        replica (due again at now + hold_s, unless ``mark_sent`` sets the time first), so several replicas
        never send one result at once."""
        rows = self._execute(
            "UPDATE traces SET next_send_at = ? WHERE trace_id IN (SELECT trace_id FROM traces WHERE"
            f" next_send_at <= ? AND {_UNACKED_SQL} ORDER BY next_send_at LIMIT ?{self.db.skip_locked})"
            f" RETURNING {_COLUMNS}, received_at",
            (now + hold_s, now, limit),
        )
        return [_trace(r) for r in sorted(rows, key=lambda r: r[-1])]

    def next_due_at(self) -> Optional[float]:
        rows = self._execute(f"SELECT MIN(next_send_at) FROM traces WHERE {_UNACKED_SQL}")
        return rows[0][0] if rows else None

    def prune(self, finished_before: float) -> int:
        """Delete traces that finished before the given time and need nothing more: acknowledged, or out of
        sends. A result still due for resending is kept. Returns how many were deleted."""
        _, deleted = self._run(
            f"DELETE FROM traces WHERE {_FINISHED_SQL} AND finished_at < ?"
            " AND (acked_at IS NOT NULL OR next_send_at IS NULL)",
            (finished_before,),
        )
        return deleted

    def forget_requests(self, keep: int) -> int:
        """Drop the request bytes (the image) of finished traces but the ``keep`` finished last; returns how many.
        (Finished: finished_at is set. Both statements read only the partial index of the rows with a request.)"""
        if keep <= 0:
            sql = "UPDATE traces SET request = NULL WHERE request IS NOT NULL AND finished_at IS NOT NULL"
            return self._run(sql)[1]
        newest = self._execute(
            "SELECT finished_at FROM traces WHERE request IS NOT NULL AND finished_at IS NOT NULL"
            " ORDER BY finished_at DESC LIMIT 1 OFFSET ?",
            (keep - 1,),
        )
        if not newest:
            return 0
        _, changed = self._run(
            "UPDATE traces SET request = NULL WHERE request IS NOT NULL AND finished_at < ?", (newest[0][0],)
        )
        return changed

    def request_of(self, trace_id: str) -> Optional[bytes]:
        """The request as it arrived (its image and the device's prediction), while the store keeps it."""
        rows = self._execute("SELECT request FROM traces WHERE trace_id = ?", (trace_id,))
        if rows and rows[0][0] is not None:
            return bytes(rows[0][0])
        rows = self._execute("SELECT request FROM hard_examples WHERE trace_id = ?", (trace_id,))
        return bytes(rows[0][0]) if rows else None

    # -- hard examples -------------------------------------------------------------------------------------------

    def add_hard_example(self, trace_id: str, edge_label: str, cloud_label: str) -> bool:
        """Keep a finished trace's request as a hard example; False if it is one already or has no request."""
        _, changed = self._run(
            "INSERT INTO hard_examples (trace_id, device_id, received_at, edge_label, cloud_label, request)"
            " SELECT trace_id, device_id, received_at, ?, ?, request FROM traces WHERE trace_id = ?"
            " AND request IS NOT NULL ON CONFLICT (trace_id) DO NOTHING",
            (edge_label, cloud_label, trace_id),
        )
        return changed == 1

    def hard_examples(
        self, labelled: Optional[bool] = None, limit: int = 100, device_globs: Optional[Sequence[str]] = None
    ) -> list[HardExample]:
        """Newest first; labelled=False: those waiting for an operator."""
        clauses: list[str] = []
        params: list[object] = []
        if labelled is not None:
            clauses.append("label IS NOT NULL" if labelled else "label IS NULL")
        if device_globs is not None:
            clauses.append("(" + (" OR ".join(self.db.glob("device_id") for _ in device_globs) or "FALSE") + ")")
            params.extend(self.db.glob_param(g) for g in device_globs)
        rows = self._execute(
            f"SELECT {_HARD_COLUMNS} FROM hard_examples WHERE {' AND '.join(clauses) or 'TRUE'}"
            " ORDER BY received_at DESC LIMIT ?",
            (*params, limit),
        )
        return [HardExample(*r) for r in rows]

    def hard_example(self, trace_id: str) -> Optional[HardExample]:
        rows = self._execute(f"SELECT {_HARD_COLUMNS} FROM hard_examples WHERE trace_id = ?", (trace_id,))
        return HardExample(*rows[0]) if rows else None

    def label_hard_example(self, trace_id: str, label: str, who: str, now: float) -> bool:
        """An operator's label for it (confirming the cloud's, or correcting it); False if there is no such one."""
        _, changed = self._run(
            "UPDATE hard_examples SET label = ?, labelled_by = ?, labelled_at = ? WHERE trace_id = ?",
            (label, who, now, trace_id),
        )
        return changed == 1

    def trim_hard_examples(self, keep: int) -> int:
        """Delete unlabelled hard examples but the newest ``keep`` (labelled ones stay: operators' work)."""
        newest = self._execute(
            "SELECT received_at FROM hard_examples WHERE label IS NULL ORDER BY received_at DESC LIMIT 1 OFFSET ?",
            (max(0, keep - 1),),
        )
        if not newest:
            return 0
        _, deleted = self._run("DELETE FROM hard_examples WHERE label IS NULL AND received_at < ?", (newest[0][0],))
        return deleted

    def count_unacked(self) -> int:
        rows = self._execute(f"SELECT COUNT(*) FROM traces WHERE {_UNACKED_SQL}")
        return int(rows[0][0])

    def count_devices(self, device_globs: Sequence[str]) -> int:
        """Traces of the devices whose ids match any of the globs (a tenant's: ``cloud.tenants``)."""
        if not device_globs:
            return 0
        where = " OR ".join(self.db.glob("device_id") for _ in device_globs)
        params = [self.db.glob_param(g) for g in device_globs]
        return int(self._execute(f"SELECT COUNT(*) FROM traces WHERE {where}", params)[0][0])

    def get(self, trace_id: str) -> Optional[HubTrace]:
        rows = self._execute(f"SELECT {_COLUMNS} FROM traces WHERE trace_id = ?", (trace_id,))
        return _trace(rows[0]) if rows else None

    def query(
        self,
        device_id: Optional[str] = None,
        status: Optional[TraceStatus] = None,
        route: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        acked: Optional[bool] = None,
        limit: int = 100,
        device_globs: Optional[Sequence[str]] = None,
    ) -> list[HubTrace]:
        """Traces matching every filter given, newest first. acked=False: finished results the device
        has not confirmed; ``device_globs``: only devices whose ids match one of them (a tenant's view)."""
        filters = {
            "device_id = ?": device_id,
            "status = ?": status.value if status else None,
            "route = ?": route,
            "received_at >= ?": since,
            "received_at < ?": until,
        }
        clauses = [clause for clause, value in filters.items() if value is not None]
        params: list[object] = [value for value in filters.values() if value is not None]
        if acked is not None:
            clauses.append("acked_at IS NOT NULL" if acked else _UNACKED_SQL)
        if device_globs is not None:
            clauses.append("(" + (" OR ".join(self.db.glob("device_id") for _ in device_globs) or "FALSE") + ")")
            params.extend(self.db.glob_param(g) for g in device_globs)
        where = " AND ".join(clauses) or "TRUE"
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM traces WHERE {where} ORDER BY received_at DESC LIMIT ?", (*params, limit)
        )
        return [_trace(r) for r in rows]


def _returns_rows(sql: str) -> bool:
    return sql.lstrip().upper().startswith("SELECT") or " RETURNING " in sql.upper()


def _trace(row: tuple) -> HubTrace:
    """A row of _COLUMNS (a claim's RETURNING adds received_at after them)."""
    values = list(row[:15])
    values[2] = TraceStatus(values[2])
    values[7] = bytes(values[7]) if values[7] is not None else None  # PostgreSQL's BYTEA may come as memoryview
    return HubTrace(*values)
