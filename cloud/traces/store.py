"""The hub's trace store (SQLite, WAL): one row per trace_id, the key that makes delivery idempotent.

    PENDING (recorded, acknowledged to the device) -> RUNNING -> SUCCESS | FAILED | TIMED_OUT

Once finished, a row is also the result's delivery queue (``cloud.dispatch.delivery``):
    sends, next_send_at   how often the result went out, and when it goes out again unless acknowledged
    delivered_at          the broker took it (MQTT PUBACK)
    acked_at              the device has it: its ResultAck, a callback's 2xx, or the gRPC response

The request bytes are kept until the trace finishes, so a hub that restarts
runs what it had accepted; a result whose next_send_at has passed is sent
again. Devices deduplicate on trace_id, so a repeat is harmless.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import sqlite_utils

from cloud.errors import HubError


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


_COLUMNS = (
    "trace_id, device_id, status, received_at, started_at, finished_at, delivered_at, result, error, route, cost,"
    " acked_at, COALESCE(sends, 0), next_send_at, COALESCE(runs, 0)"
)
# Columns added after the first release, with their types: a store written before them gains them at open.
_ADDED = (("route", str), ("cost", float), ("acked_at", float), ("sends", int), ("next_send_at", float), ("runs", int))


class TraceStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        db = sqlite_utils.Database(conn)
        db.table("traces").create(
            {
                "trace_id": str,
                "device_id": str,
                "status": str,
                "request": bytes,
                "received_at": float,
                "started_at": float,
                "finished_at": float,
                "delivered_at": float,
                "result": bytes,
                "error": str,
                "route": str,
                "cost": float,
                "acked_at": float,
                "sends": int,
                "next_send_at": float,
                "runs": int,
            },
            pk="trace_id",
            not_null={"device_id", "status", "received_at"},
            if_not_exists=True,
        )
        table = db.table("traces")
        for column, kind in _ADDED:
            if column not in table.columns_dict:
                table.add_column(column, kind)
        table.create_index(["status"], if_not_exists=True)
        table.create_index(["next_send_at"], if_not_exists=True)
        table.create_index(["device_id", "received_at"], if_not_exists=True)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> tuple[list[tuple], int]:
        """Execute one statement (autocommit); return its rows and how many rows it changed."""
        with self._lock:
            if self._conn is None:
                raise HubError(f"trace store {self.path} is not open")
            cursor = self._conn.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
        return self._run(sql, params)[0]

    def insert_if_absent(self, trace_id: str, device_id: str, request: bytes, now: float) -> bool:
        """Record a new trace as PENDING; False if the trace_id is already known."""
        _, changed = self._run(
            "INSERT OR IGNORE INTO traces (trace_id, device_id, status, request, received_at) VALUES (?, ?, ?, ?, ?)",
            (trace_id, device_id, TraceStatus.PENDING.value, request, now),
        )
        return changed == 1

    def set_running(self, trace_id: str, now: float) -> None:
        self._execute(
            "UPDATE traces SET status = ?, started_at = ?, runs = COALESCE(runs, 0) + 1 WHERE trace_id = ?",
            (TraceStatus.RUNNING.value, now, trace_id),
        )

    def set_finished(
        self,
        trace_id: str,
        status: TraceStatus,
        result: bytes,
        error: Optional[str],
        now: float,
        route: str = "",
        cost: float = 0.0,
    ) -> None:
        """Record the result; it is due for sending at once (next_send_at = now) until ``mark_sent``."""
        self._execute(
            "UPDATE traces SET status = ?, result = ?, error = ?, finished_at = ?, route = ?, cost = ?, request = NULL,"
            " next_send_at = ? WHERE trace_id = ?",
            (status.value, result, error, now, route or None, cost, now, trace_id),
        )

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
            "UPDATE traces SET acked_at = ?, next_send_at = NULL, delivered_at = MIN(COALESCE(delivered_at, ?), ?)"
            f" WHERE trace_id = ? AND device_id = ? AND {_UNACKED_SQL}",
            (now, now, now, trace_id, device_id),
        )
        return changed == 1

    def due(self, now: float, limit: int = 100) -> list[HubTrace]:
        """Finished, unacknowledged results whose next send time has come, oldest first."""
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM traces WHERE next_send_at <= ? AND {_UNACKED_SQL} ORDER BY next_send_at LIMIT ?",
            (now, limit),
        )
        return [_trace(r) for r in rows]

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

    def count_unacked(self) -> int:
        rows = self._execute(f"SELECT COUNT(*) FROM traces WHERE {_UNACKED_SQL}")
        return rows[0][0]

    def count_devices(self, device_globs: Sequence[str]) -> int:
        """Traces of the devices whose ids match any of the globs (a tenant's: ``cloud.tenants``)."""
        if not device_globs:
            return 0
        where = " OR ".join("device_id GLOB ?" for _ in device_globs)
        return int(self._execute(f"SELECT COUNT(*) FROM traces WHERE {where}", tuple(device_globs))[0][0])

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
        params = [value for value in filters.values() if value is not None]
        if acked is not None:
            clauses.append("acked_at IS NOT NULL" if acked else _UNACKED_SQL)
        if device_globs is not None:
            clauses.append("(" + (" OR ".join("device_id GLOB ?" for _ in device_globs) or "0") + ")")
            params.extend(device_globs)
        where = " AND ".join(clauses) or "1"
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM traces WHERE {where} ORDER BY received_at DESC LIMIT ?", (*params, limit)
        )
        return [_trace(r) for r in rows]

    def unfinished(self, received_before: Optional[float] = None) -> list[tuple[str, bytes]]:
        """(trace_id, request bytes) of every accepted trace that has no result yet (received before a time)."""
        return [
            (r[0], r[1])
            for r in self._execute(
                "SELECT trace_id, request FROM traces WHERE status IN (?, ?) AND received_at < ? ORDER BY received_at",
                (TraceStatus.PENDING.value, TraceStatus.RUNNING.value, received_before or float("inf")),
            )
        ]


def _trace(row: tuple) -> HubTrace:
    return HubTrace(row[0], row[1], TraceStatus(row[2]), *row[3:])
