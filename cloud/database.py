"""Where each hub store keeps its tables: a SQLite file (one hub on one machine: the default), or a schema of its
own in one PostgreSQL database (any number of hub replicas, on any nodes).

    db.open()                     connect, then run the store's migrations that have not run yet
    with db.connection() as c:    one statement at a time, each committed on its own
    with db.transaction() as c:   all or nothing, one transaction of this store at a time (SQLite: BEGIN
                                  IMMEDIATE; PostgreSQL: the store's advisory lock); a call on the same
                                  thread inside one joins it
    c.execute(sql, params)        ``?`` placeholders, in the SQL both databases speak

The stores write one SQL for both: ON CONFLICT upserts (``upsert``), TRUE/FALSE, CASE, RETURNING, and
``glob`` for device-id patterns. Schemas are written with SQLite's type names, which PostgreSQL's side maps
(REAL -> DOUBLE PRECISION, BLOB -> BYTEA, INTEGER -> BIGINT, an AUTOINCREMENT key -> an identity column).
``skip_locked`` is the clause that lets several replicas claim rows from one table without waiting on each
other (PostgreSQL's FOR UPDATE SKIP LOCKED; SQLite has one writer and needs none).

Migrations: a store's schema is a list of steps; ``schema_migrations`` records the steps that ran, and
``open`` runs the rest in order, each in its own transaction. A released step is never edited: a change is a
new step at the end.

Across replicas (PostgreSQL): ``notify``/``listen`` carry a store's events (LISTEN/NOTIFY), and ``leader``
elects one replica for work that must run once (a session advisory lock, released when its holder dies). On
SQLite both stay in this process, where the one hub is all there is.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Union

from cloud.errors import HubError

logger = logging.getLogger(__name__)

Migration = Sequence[str]  # one step: statements run together
Listener = Callable[[str], None]


class DuplicateKey(HubError):
    """An insert met a row with the same key (either database's integrity error)."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(abc.ABC):
    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """One statement with ``?`` placeholders; DuplicateKey for a key that is taken."""


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT a whole row, or replace the one with the same key (SQLite's INSERT OR REPLACE, in words both
    databases know)."""
    others = [c for c in columns if c not in key]
    update = ", ".join(f"{c} = excluded.{c}" for c in others)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join(key)}) DO " + (f"UPDATE SET {update}" if others else "NOTHING")
    )


@dataclass(frozen=True)
class PostgresLocation:
    """A store in PostgreSQL: the database's URL, and the schema the store's tables live in."""

    url: str
    schema: str


Location = Union[Path, PostgresLocation]  # a SQLite file, or a schema in PostgreSQL


def database(
    location: Location,
    name: str,
    migrations: Sequence[Migration],
    *,
    synchronous: str = "NORMAL",
    closed_error: type[HubError] = HubError,
    before_migrations: Callable[[sqlite3.Connection], None] = lambda _conn: None,
) -> Database:
    """The store's tables where ``location`` says. ``synchronous`` and ``before_migrations``: SQLite's only
    (PostgreSQL's commits are durable; its schemas have no history from before migrations)."""
    if isinstance(location, PostgresLocation):
        return PostgresDatabase(location.url, location.schema, name, migrations, closed_error=closed_error)
    return SqliteDatabase(
        location,
        name,
        migrations,
        synchronous=synchronous,
        closed_error=closed_error,
        before_migrations=before_migrations,
    )


class Store:
    """The base of a hub store written as SQL over ``cloud.database``: open, close, and its connections."""

    def __init__(self, location: Location, name: str, migrations: Sequence[Migration], **options: Any) -> None:
        self.db = database(location, name, migrations, **options)

    def open(self) -> None:
        self.db.open()

    def close(self) -> None:
        self.db.close()

    def connection(self) -> AbstractContextManager[Connection]:
        return self.db.connection()

    def transaction(self) -> AbstractContextManager[Connection]:
        return self.db.transaction()


class Database(abc.ABC):
    """One store's tables. ``name``: what the store is called in errors and logs; ``migrations``: its schema
    steps, in order; ``closed_error``: what a call raises while the store is not open."""

    skip_locked = ""  # appended to a SELECT whose rows the statement then claims
    shared = False  # whether other hub replicas use these tables at once

    def __init__(self, name: str, migrations: Sequence[Migration], closed_error: type[HubError]) -> None:
        self.name = name
        self._migrations = migrations
        self._closed_error = closed_error
        self._joined = threading.local()  # the transaction this thread is in, if any
        self._listeners: dict[str, list[Listener]] = {}

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def glob(self, column: str) -> str:
        """A condition: ``column`` matches the shell pattern given as its parameter (* ? [..])."""

    def glob_param(self, pattern: str) -> str:
        return pattern

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        joined = getattr(self._joined, "conn", None)
        if joined is not None:
            yield joined
            return
        with self._connect() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        joined = getattr(self._joined, "conn", None)
        if joined is not None:
            yield joined
            return
        with self._begin() as conn:
            self._joined.conn = conn
            try:
                yield conn
            finally:
                self._joined.conn = None

    @abc.abstractmethod
    def _connect(self) -> Any: ...

    @abc.abstractmethod
    def _begin(self) -> Any: ...

    def notify(self, channel: str, payload: str) -> None:
        """Tell every replica's listeners of ``channel`` (this process's, on SQLite)."""
        self._deliver(channel, payload)

    def listen(self, channel: str, listener: Listener) -> None:
        """Call ``listener(payload)`` for every notification on ``channel`` (from a thread of the database's)."""
        self._listeners.setdefault(channel, []).append(listener)

    def _deliver(self, channel: str, payload: str) -> None:
        for listener in list(self._listeners.get(channel, ())):
            try:
                listener(payload)
            except Exception:  # one listener's bug must not stop the others, nor the notifying call
                logger.exception("%s: a listener of %s failed", self.name, channel)

    def leader(self, duty: str) -> Leadership:
        """Whether this replica is the one that does ``duty`` (SQLite: always; there is one hub)."""
        return Leadership()

    def _run_migrations(self, conn: Connection, begin: Callable[[], Any]) -> None:
        """Run the steps not yet recorded for this store (two stores may share a SQLite file: each has its rows)."""
        conn.execute(
            self._schema_sql(
                "CREATE TABLE IF NOT EXISTS schema_migrations (store TEXT NOT NULL, step INTEGER NOT NULL,"
                " applied_at REAL NOT NULL, PRIMARY KEY (store, step))"
            )
        )
        rows = conn.execute("SELECT step FROM schema_migrations WHERE store = ?", (self.name,)).fetchall()
        done = {row[0] for row in rows}
        for step, statements in enumerate(self._migrations, start=1):
            if step in done:
                continue
            with begin() as tx:
                for statement in statements:
                    tx.execute(self._schema_sql(statement))
                tx.execute(
                    "INSERT INTO schema_migrations (store, step, applied_at) VALUES (?, ?, ?)",
                    (self.name, step, time.time()),
                )
            logger.info("%s: schema step %d applied", self.name, step)

    def _schema_sql(self, statement: str) -> str:
        return statement


class Leadership:
    """Held for good (SQLite: the one hub is everyone)."""

    def held(self) -> bool:
        return True

    def release(self) -> None:
        """Let another replica take the duty."""


# -- SQLite ------------------------------------------------------------------------------------------------------


class _SqliteConnection(Connection):
    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self.raw.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise DuplicateKey(str(exc)) from exc


class SqliteDatabase(Database):
    """One file, in WAL mode; one connection shared by threads behind one lock; autocommit, so transactions
    are explicit (BEGIN IMMEDIATE: one writer at a time)."""

    def __init__(
        self,
        path: Path,
        name: str,
        migrations: Sequence[Migration],
        *,
        synchronous: str = "NORMAL",
        closed_error: type[HubError] = HubError,
        before_migrations: Callable[[sqlite3.Connection], None] = lambda _conn: None,
    ) -> None:
        """``synchronous``: FULL for a store that must survive a power cut; ``before_migrations``: brings a
        file written before migrations existed into line with step 1."""
        super().__init__(name, migrations, closed_error)
        self.path = path
        self._synchronous = synchronous
        self._before_migrations = before_migrations
        self._lock = threading.Lock()
        self._conn: Optional[_SqliteConnection] = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute(f"PRAGMA synchronous={self._synchronous}")
        conn = _SqliteConnection(raw)
        self._before_migrations(raw)
        self._run_migrations(conn, lambda: self._immediate(conn))
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.raw.close()
                self._conn = None

    def glob(self, column: str) -> str:
        return f"{column} GLOB ?"

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self._lock:
            if self._conn is None:
                raise self._closed_error(f"the {self.name} ({self.path}) is not open")
            yield self._conn

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._connect() as conn, self._immediate(conn) as tx:
            yield tx

    @staticmethod
    @contextmanager
    def _immediate(conn: Connection) -> Iterator[Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


# -- PostgreSQL --------------------------------------------------------------------------------------------------

_PG_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
)


def _pg_sql(sql: str) -> str:
    """``?`` placeholders -> psycopg's ``%s`` (a literal % doubled first). The stores' SQL has no ? in a string."""
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_params(params: Sequence[Any]) -> tuple[Any, ...]:
    """Booleans as 0/1, as SQLite stores them (the schemas' columns are integers)."""
    return tuple(int(p) if isinstance(p, bool) else p for p in params)


def glob_to_regex(pattern: str) -> str:
    """A shell pattern (SQLite's GLOB: * ? [..], case-sensitive) as an anchored POSIX regular expression."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + "$"


class _PgConnection(Connection):
    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        import psycopg

        try:
            cursor: Cursor = self.raw.execute(_pg_sql(sql), _pg_params(params))
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateKey(str(exc)) from exc
        return cursor


class PostgresDatabase(Database):
    """The store's tables in schema ``schema`` of the database at ``url``, through a pool of connections
    (psycopg 3). Several hub replicas share them."""

    skip_locked = " FOR UPDATE SKIP LOCKED"
    shared = True

    def __init__(
        self,
        url: str,
        schema: str,
        name: str,
        migrations: Sequence[Migration],
        *,
        closed_error: type[HubError] = HubError,
        pool_size: int = 4,
    ) -> None:
        super().__init__(name, migrations, closed_error)
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise HubError(f"{name}: schema name {schema!r} must be lower-case letters, digits and _")
        self.url = url
        self.schema = schema
        self._pool_size = pool_size
        self._pool: Any = None
        self._lock_key = _key(f"{schema}:transactions")
        self._listener: Optional[_PgListener] = None

    def open(self) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        options = f"-c search_path={self.schema}"
        try:
            with psycopg.connect(self.url, autocommit=True, options=options, connect_timeout=10) as admin:
                # Replicas starting together take turns: CREATE ... IF NOT EXISTS is not safe run concurrently.
                admin.execute("SELECT pg_advisory_lock(%s)", (_key(f"{self.schema}:migrations"),))
                admin.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                conn = _PgConnection(admin)
                self._run_migrations(conn, lambda: _pg_transaction(conn))
        except psycopg.Error as exc:
            raise self._closed_error(f"the {self.name}: PostgreSQL at {_safe(self.url)}: {exc}") from exc
        pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "options": options},
            name=self.name,
            open=False,
        )
        try:
            pool.open(wait=True, timeout=30.0)
        except Exception as exc:
            pool.close()
            raise self._closed_error(f"the {self.name}: cannot reach PostgreSQL at {_safe(self.url)}: {exc}") from exc
        self._pool = pool

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def glob(self, column: str) -> str:
        return f"{column} ~ ?"

    def glob_param(self, pattern: str) -> str:
        return glob_to_regex(pattern)

    @contextmanager
    def _connect(self) -> Iterator[_PgConnection]:
        if self._pool is None:
            raise self._closed_error(f"the {self.name} (PostgreSQL schema {self.schema}) is not open")
        with self._pool.connection() as raw:
            yield _PgConnection(raw)

    @contextmanager
    def _begin(self) -> Iterator[_PgConnection]:
        with self._connect() as conn, conn.raw.transaction():
            # One transaction of this store at a time, as SQLite's BEGIN IMMEDIATE gives: the read-modify-write
            # transactions (an audit chain's next link, a device's row) stay correct across replicas.
            conn.execute("SELECT pg_advisory_xact_lock(?)", (self._lock_key,))
            yield conn

    def _schema_sql(self, statement: str) -> str:
        for pattern, replacement in _PG_TYPES:
            statement = pattern.sub(replacement, statement)
        return statement

    def notify(self, channel: str, payload: str) -> None:
        with self.connection() as conn:
            conn.execute("SELECT pg_notify(?, ?)", (f"{self.schema}_{channel}", payload))

    def listen(self, channel: str, listener: Listener) -> None:
        super().listen(channel, listener)
        if self._listener is None:
            self._listener = _PgListener(self)
        self._listener.add(f"{self.schema}_{channel}", channel)

    def leader(self, duty: str) -> Leadership:
        return _PgLeadership(self.url, _key(f"{self.schema}:leader:{duty}"), f"{self.name}: {duty}")


@contextmanager
def _pg_transaction(conn: _PgConnection) -> Iterator[Connection]:
    with conn.raw.transaction():
        yield conn


def _key(text: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class _PgListener:
    """One connection that LISTENs, on a thread of its own; reconnects after a lost connection (notifications
    sent meanwhile are missed: whoever waits on one also polls the store)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._channels: dict[str, str] = {}
        self._stopping = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{db.schema}-listen", daemon=True)
        self._thread.start()

    def add(self, pg_channel: str, channel: str) -> None:
        self._channels[pg_channel] = channel
        self._changed.set()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        import psycopg

        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._db.url, autocommit=True) as conn:
                    listening: set[str] = set()
                    while not self._stopping.is_set():
                        for pg_channel in set(self._channels) - listening:
                            conn.execute(f'LISTEN "{pg_channel}"')
                            listening.add(pg_channel)
                        for note in conn.notifies(timeout=0.5, stop_after=100):
                            channel = self._channels.get(note.channel)
                            if channel is not None:
                                self._db._deliver(channel, note.payload)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                logger.warning("%s: LISTEN connection lost (%s); reconnecting in 1 s", self._db.name, exc)
                self._stopping.wait(1.0)


class _PgLeadership(Leadership):
    """A session advisory lock on a connection of its own: held while that connection lives, so a replica that
    dies hands the duty on. ``held`` tries to take it when not held yet (cheap: one query)."""

    def __init__(self, url: str, key: int, what: str) -> None:
        self._url = url
        self._key = key
        self._what = what
        self._conn: Any = None
        self._lock = threading.Lock()

    def held(self) -> bool:
        import psycopg

        with self._lock:
            try:
                if self._conn is not None:
                    self._conn.execute("SELECT 1")  # still alive: the lock is still ours
                    return True
                conn = psycopg.connect(self._url, autocommit=True)
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
                if row is not None and row[0]:
                    self._conn = conn
                    logger.info("%s: this replica leads", self._what)
                    return True
                conn.close()
                return False
            except psycopg.Error as exc:
                logger.warning("%s: lost or could not check leadership: %s", self._what, exc)
                self._drop()
                return False

    def release(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(Exception):  # already broken: closing is all that was left to do
                self._conn.close()
            self._conn = None
