"""One SQLite file, opened the way every hub store opens it: WAL, autocommit (transactions are explicit), one
connection shared by threads behind one lock, and the store's schema statements run at open."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from cloud.errors import HubError


class SqliteFile:
    def __init__(
        self,
        path: Path,
        name: str,
        schema: Sequence[str],
        *,
        synchronous: str = "NORMAL",
        closed_error: type[HubError] = HubError,
    ) -> None:
        """``name``: what the store is called in errors; ``schema``: statements run at every open (idempotent);
        ``closed_error``: raised by a call while the file is not open."""
        self.path = path
        self._name = name
        self._schema = schema
        self._synchronous = synchronous
        self._closed_error = closed_error
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        for statement in self._schema:
            conn.execute(statement)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, held for the block: one statement, or a ``transaction``."""
        with self._lock:
            if self._conn is None:
                raise self._closed_error(f"the {self._name} is not open")
            yield self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK if the block raises)."""
        with self.connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
