"""The device's SQLite file: one connection, one lock, short write transactions that the trace store and the
outbox both take part in, so a trace and its outbox row are written together or not at all.

Every write goes through ``write()``: BEGIN IMMEDIATE, each participant's ``begin`` (inside the
transaction), the caller's statements, COMMIT; then each participant's ``committed``. On any error the
transaction rolls back and each participant's ``rolled_back`` undoes what it kept in memory. SQLITE_FULL
becomes ``StoreFull``; anything else from SQLite, ``StoreError``. Reads (``read()``) take the lock but no
transaction, so they work while the disk is full.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import sqlite_utils

from edge.errors import StoreError, StoreFull
from edge.outbox.schema import create_schema

_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, which Python only names from 3.11


class Participant:
    """What a table's owner does at the edges of every write transaction (all hooks run under the lock)."""

    def begin(self, conn: sqlite3.Connection) -> None:
        """Inside the transaction, before the caller's statements."""

    def committed(self) -> None:
        """The transaction is on disk: what was kept aside in memory may now count."""

    def rolled_back(self) -> None:
        """Nothing of the transaction was written: undo what ``begin`` or the statements kept in memory."""


class Database:
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        self._participants: list[Participant] = []

    def join(self, participant: Participant) -> None:
        self._participants.append(participant)

    def open(self) -> sqlite3.Connection:
        """Open (creating or migrating the schema); return the connection for the owners' first reads."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            create_schema(sqlite_utils.Database(conn))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the device store {self.path}: {exc}") from exc
        self._conn = conn
        return conn

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success, rolled back on any error."""
        with self._lock:
            if self._conn is None:
                raise StoreError("the device store is not open")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                for participant in self._participants:
                    participant.begin(conn)
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._roll_back(conn)
                kind = StoreFull if is_full(exc) else StoreError
                raise kind(f"device store {self.path}: {exc}") from exc
            except BaseException:
                self._roll_back(conn)
                raise
            for participant in self._participants:
                participant.committed()

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        for participant in self._participants:
            participant.rolled_back()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read outside any write transaction: it works on a full disk, so /healthz, the metrics and the
        sender can still look while nothing can be written."""
        with self._lock:
            if self._conn is None:
                raise StoreError("the device store is not open")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"device store {self.path}: {exc}") from exc


def is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: by its code where Python gives it (3.11+), else by SQLite's fixed message for it."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code == _SQLITE_FULL if code is not None else "database or disk is full" in str(exc)
