"""A throwaway PostgreSQL server for tests, benches and the fleet tools: Debian's ``postgresql`` package, a new
cluster in a temporary folder, listening on 127.0.0.1:port, stopped and removed after.

Production runs its own PostgreSQL (README: "Scaling out"); the hub only needs ``database_url``.
PostgreSQL refuses to run as root: started by root, the cluster belongs to the ``postgres`` user the package
creates, and its commands run as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from tandem.broker import free_port, wait_for_port


class PostgresError(Exception):
    pass


def find_bindir() -> Optional[Path]:
    """The folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """``url``: postgresql://postgres@127.0.0.1:PORT/postgres (trust authentication, loopback only).

    fsync is off: a test's cluster does not outlive its run, so it need not survive a power cut."""

    def __init__(self, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir: Optional[Path] = None
        self._bindir = find_bindir()
        self._user: Optional[pwd.struct_passwd] = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def start(self) -> None:
        if self._bindir is None:
            raise PostgresError("PostgreSQL is not installed: sudo apt-get install -y postgresql")
        self._dir = Path(tempfile.mkdtemp(prefix="tandem-pg-"))
        data = self._dir / "data"
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresError("running as root needs the postgres user (Debian's postgresql package)") from exc
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        self._launch()

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def kill(self) -> None:
        """Stop at once (immediate mode: clients are cut off, as in a crash)."""
        if self._dir is not None:
            self._run("pg_ctl", "-D", str(self._dir / "data"), "-m", "immediate", "stop", check=False)

    def restart(self) -> None:
        """Start again on the same port and data (after ``kill``)."""
        self._launch()

    def _launch(self) -> None:
        if self._dir is None:
            raise PostgresError("not started")
        options = f"-c listen_addresses={self.host} -p {self.port} -k {self._dir} -c fsync=off -c max_connections=300"
        log = str(self._dir / "server.log")
        self._run("pg_ctl", "-D", str(self._dir / "data"), "-l", log, "-o", options, "-w", "start")
        if not wait_for_port(self.host, self.port, 30.0):
            raise PostgresError(f"PostgreSQL did not listen on {self.port}: see {log}")

    def stop(self) -> None:
        if self._dir is None:
            return
        self._run("pg_ctl", "-D", str(self._dir / "data"), "-m", "fast", "stop", check=False)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def _run(self, command: str, *args: str, check: bool = True) -> None:
        if self._bindir is None:
            raise PostgresError("PostgreSQL is not installed: sudo apt-get install -y postgresql")
        argv = [str(self._bindir / command), *args]
        user = self._user
        done = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            cwd=self._dir,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise PostgresError(f"{command} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
