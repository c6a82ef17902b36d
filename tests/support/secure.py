"""A secured fleet for tests: a fleet CA made here, Mosquitto from the shipped config with its TLS listeners,
certificates of every kind an attacker might bring, and TLS MQTT clients that record what they get."""

from __future__ import annotations

import datetime
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import paho.mqtt.client as mqtt

from cloud.config import SecurityConfig
from cloud.security.pki import FleetCA
from common.files import write_atomic
from common.tls import TlsFiles
from tandem.broker import MosquittoBroker, free_port, secure_broker_files


@dataclass
class SecureFleet:
    """The CA, the broker and the folders; ``device()`` issues a device's certificate in a folder of its own."""

    root: Path
    ca: FleetCA
    broker: MosquittoBroker
    acl_dir: Path

    @property
    def hub_port(self) -> int:
        assert self.broker.tls is not None
        return self.broker.tls.hub_port

    def security(self, grpc_port: Optional[int] = None) -> SecurityConfig:
        """The hub's security section for this fleet: the broker is reloaded by SIGHUP to its pid."""
        return SecurityConfig(
            pki_path=self.ca.folder,
            grpc_port=grpc_port or free_port(),
            grpc_host="127.0.0.1",
            broker_acl_path=self.acl_dir / "devices.acl",
            broker_reload_command=["kill", "-HUP", str(self.broker.pid)],
        )

    def device(self, device_id: str, days: int = 30, not_before: Optional[datetime.datetime] = None) -> TlsFiles:
        key, cert = self.ca.issue_device_for_tests(device_id, days=days, not_before=not_before)
        return self.write(device_id, key, cert)

    def write(self, name: str, key: bytes, cert: bytes, ca: Optional[bytes] = None) -> TlsFiles:
        folder = self.root / "devices" / name
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "key.pem", key)
        write_atomic(folder / "cert.pem", cert)
        write_atomic(folder / "ca.pem", ca or self.ca.ca_path.read_bytes())
        return TlsFiles(ca_path=folder / "ca.pem", cert_path=folder / "cert.pem", key_path=folder / "key.pem")


@contextmanager
def secure_fleet() -> Iterator[SecureFleet]:
    """A fleet CA in a folder the broker's user can read, and Mosquitto with the shipped TLS listeners."""
    root = Path(tempfile.mkdtemp(prefix="tandem-secure-"))
    try:
        tls = secure_broker_files(root)
        broker = MosquittoBroker(free_port(), tls=tls)
        with broker:
            yield SecureFleet(root, FleetCA(tls.pki_dir), broker, tls.acl_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Listener:
    """A TLS MQTT client that records what it is delivered, and whether it is connected."""

    client: mqtt.Client
    received: list[tuple[str, bytes]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    refused: threading.Event = field(default_factory=threading.Event)
    disconnects: int = 0

    def topics(self) -> set[str]:
        return {topic for topic, _ in self.received}


def listener(
    host: str, port: int, client_id: str, tls_files: Optional[TlsFiles], *, cert: bool = True, clean: bool = True
) -> Listener:
    """Connect (in the background) with ``tls_files``; ``cert=False`` offers no client certificate at all."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=clean
    )
    if tls_files is not None:
        if cert:
            client.tls_set(str(tls_files.ca_path), str(tls_files.cert_path), str(tls_files.key_path))
        else:
            client.tls_set(str(tls_files.ca_path))
    client.reconnect_delay_set(1, 1)
    state = Listener(client)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            state.refused.set()
        else:
            state.connected.set()

    def on_disconnect(*_args: object) -> None:
        state.connected.clear()
        state.disconnects += 1

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = lambda _c, _u, message: state.received.append((message.topic, bytes(message.payload)))
    client.connect_async(host, port, keepalive=10)
    client.loop_start()
    return state


def stop(state: Listener) -> None:
    state.client.disconnect()
    state.client.loop_stop()
