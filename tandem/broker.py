"""MQTT brokers for development, tests and the demo: Mosquitto from the project's config, or embedded amqtt.

Production runs its own Mosquitto (or EMQX) from ``deploy/cloud/mosquitto.conf``;
these helpers start one on a chosen port for a single run and stop it after.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO_CONF = ROOT / "deploy" / "cloud" / "mosquitto.conf"
HUB_ACL = ROOT / "deploy" / "cloud" / "hub.acl"
LISTENERS = "# ---- Listeners"  # the line of mosquitto.conf where its listeners begin
SHIPPED_DEVICE_LISTENER = "listener 8883"
SHIPPED_HUB_LISTENER = "listener 8884 127.0.0.1"


class BrokerError(Exception):
    pass


# Ports handed out by this process, so two calls never return the same one.
_GIVEN_PORTS: set[int] = set()
# Ray's workers listen on 10002-19999 by default; the kernel's ephemeral range starts higher.
_FIRST_PORT = 20000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port that is free now on every address, chosen where nothing else picks ports on its own.

    A port from bind(0) lies in the kernel's ephemeral range, which every outgoing connection
    (Ray starts hundreds) draws its local port from; one of them can take it before the server
    that was promised it binds ("Failed to bind to address [::]:34581" in CI). Ports between
    Ray's worker range and the ephemeral range are only taken by someone asking for them.
    """
    last = _ephemeral_start() - 1
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(_FIRST_PORT, last) if last > _FIRST_PORT else 0
        if port in _GIVEN_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _GIVEN_PORTS.add(port)
        return port
    raise BrokerError(f"no free port between {_FIRST_PORT} and {last}")


def find_mosquitto() -> Optional[str]:
    """The mosquitto binary: on PATH, or in /usr/sbin where Debian puts it (not on a user's PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass(frozen=True)
class BrokerTls:
    """The secure listeners' files: the fleet CA's folder (``cloud.security.pki``) and the folder of the ACL
    files (the hub writes devices.acl there), and the port of the hub's own listener."""

    pki_dir: Path
    acl_dir: Path
    hub_port: int


class MosquittoBroker:
    """Mosquitto started from the project's mosquitto.conf, listening on 127.0.0.1:port.

    Plain (``tls`` None): the settings above the file's listeners, and one plain listener anyone may use.
    Secure: the whole file, its two TLS listeners moved to ``port`` (devices) and ``tls.hub_port`` (the hub)
    and its /etc/tandem/ folders to ``tls``'s; ``reload()`` is the SIGHUP the hub sends after a revocation.

    ``kill()`` ends it with SIGKILL, as a crash would (what it had not saved is gone), and ``restart()``
    starts it again on the same port and persistence folder; ``stop()`` ends it and removes the folder.
    """

    def __init__(
        self, port: int, conf: Path = MOSQUITTO_CONF, binary: Optional[str] = None, tls: Optional[BrokerTls] = None
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.tls = tls
        self._conf = conf
        self._binary = binary or find_mosquitto()
        self._dir: Optional[tempfile.TemporaryDirectory[str]] = None
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Optional[Path]:
        return Path(self._dir.name) / "mosquitto.log" if self._dir is not None else None

    def start(self) -> None:
        if self._binary is None:
            raise BrokerError("mosquitto is not installed (Debian/Ubuntu: sudo apt-get install mosquitto)")
        self._dir = tempfile.TemporaryDirectory(prefix="tandem-mosquitto-")
        work = Path(self._dir.name)
        hand_to_broker_user(work)
        (work / "mosquitto.conf").write_text(self._config_text(work))
        self._launch()

    def _config_text(self, work: Path) -> str:
        """The project's settings with this run's listeners and persistence folder."""
        shipped = self._conf.read_text()
        if self.tls is None:
            settings = shipped.split(LISTENERS)[0]
            return settings + (
                f"\n# added for this run: plain text, anyone may connect\nlistener {self.port} {self.host}\n"
                f"allow_anonymous true\npersistence_location {work}/\n"
            )
        for line in (SHIPPED_DEVICE_LISTENER, SHIPPED_HUB_LISTENER):
            if f"\n{line}\n" not in shipped:
                raise BrokerError(f"{self._conf} has no line {line!r} to move to this run's port")
        self.tls.acl_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HUB_ACL, self.tls.acl_dir / "hub.acl")
        (self.tls.acl_dir / "devices.acl").touch()
        text = (
            shipped.replace(f"\n{SHIPPED_DEVICE_LISTENER}\n", f"\nlistener {self.port} {self.host}\n")
            .replace(f"\n{SHIPPED_HUB_LISTENER}\n", f"\nlistener {self.tls.hub_port} 127.0.0.1\n")
            .replace("/etc/tandem/pki/", f"{self.tls.pki_dir}/")
            .replace("/etc/tandem/broker/", f"{self.tls.acl_dir}/")
        )
        return text + f"\n# added for this run\npersistence_location {work}/\n"

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its ACL files and CRL again (what the hub asks for after a revocation)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    def _launch(self) -> None:
        if self._dir is None or self._binary is None:
            raise BrokerError("the broker was never started")
        work = Path(self._dir.name)
        with (work / "mosquitto.log").open("ab") as log:
            self._process = subprocess.Popen(
                [self._binary, "-c", str(work / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
            )
        if not wait_for_port(self.host, self.port, 10.0):
            self.stop()
            raise BrokerError(f"mosquitto did not listen on port {self.port}; see its log")
        logger.info("mosquitto %s on %s:%d", self._binary, self.host, self.port)

    def kill(self) -> None:
        """SIGKILL, as a crash: no last save, no goodbye to the clients."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        """Start again on the same port, from whatever the persistence folder holds."""
        if not self.running:
            self._launch()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def hand_to_broker_user(path: Path) -> None:
    """Make ``path`` Mosquitto's own. Started as root, Mosquitto drops to its user, which must be able to write
    its persistence file (otherwise it runs with nothing saved and says so only in its log) and, on a reload,
    read its TLS key again."""
    if os.geteuid() != 0:
        return
    try:
        account = pwd.getpwnam("mosquitto")
    except KeyError:
        return  # no such user: Mosquitto stays root
    os.chown(path, account.pw_uid, account.pw_gid)


class EmbeddedBroker:
    """amqtt in a background thread, for machines without Mosquitto.

    amqtt keeps QoS 1 messages for an offline persistent session only when the
    client is not anonymous, so anonymous log-in is off and any client that
    gives a user name is accepted (tandem's clients always give one).
    """

    def __init__(self, port: int) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._broker: object = None

    def start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
        }
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())  # type: ignore[attr-defined]
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="tandem-embedded-broker", daemon=True)
        self._thread.start()
        started.wait(10.0)
        if failure:
            raise BrokerError(f"embedded broker failed to start: {failure[0]}") from failure[0]
        logger.info("embedded amqtt broker on %s:%d", self.host, self.port)

    def stop(self) -> None:
        if self._loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)  # type: ignore[attr-defined]
        try:
            future.result(10.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5.0)
            self._loop = None
            self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def secure_broker_files(root: Path) -> BrokerTls:
    """A new fleet CA under ``root``/pki and an ACL folder ``root``/broker, readable by the broker's user
    (``tandem demo --secure`` and the tests; production makes these with ``tandem hub pki init``). The folders
    above ``root`` must let that user through."""
    from cloud.security.pki import FleetCA  # the demo's and the tests' helper only; the broker needs no hub code

    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    ca = FleetCA.init(root / "pki")
    ca.folder.chmod(0o755)
    hand_to_broker_user(ca.folder / "server.key")
    acl_dir = root / "broker"
    acl_dir.mkdir(exist_ok=True)
    return BrokerTls(ca.folder, acl_dir, free_port())
