"""What the hub does to the broker when the set of enrolled devices changes: the ACL, a reload, a cut.

Mosquitto reads the ACL file and the CRL again on SIGHUP, but a session that is already open stays open
through a reload. So a revocation also takes the device's session over: the hub connects on its own
listener (deploy/cloud/mosquitto.conf) with the device's client id, the broker ends the device's
connection at once, and the hub leaves with a clean session. The device's reconnect then fails its TLS
handshake against the new CRL.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt

from cloud.errors import PkiError
from common.files import write_atomic
from common.mqtt import new_client
from common.tls import TlsFiles
from protocol.topics import DEVICE_READS, DEVICE_WRITES, DeviceTopic

logger = logging.getLogger(__name__)

CUT_TIMEOUT_S = 5.0


def device_acl(devices: Sequence[str]) -> str:
    """Mosquitto ACL lines giving each device its own topics: write what it sends, read what it is sent."""
    lines = ["# Written by the hub from its fleet CA (cloud.security.broker); edits are overwritten.\n"]
    for device_id in sorted(devices):
        lines.append(f"\nuser {device_id}\n")
        lines += [f"topic write {DeviceTopic(device_id, channel)}\n" for channel in sorted(DEVICE_WRITES, key=str)]
        lines += [f"topic read {DeviceTopic(device_id, channel)}\n" for channel in sorted(DEVICE_READS, key=str)]
    return "".join(lines)


class BrokerControl:
    """The devices' ACL file, the broker's reload command, and the hub's listener for cutting sessions."""

    def __init__(self, acl_path: Path, reload_command: Sequence[str], host: str, port: int, hub_tls: TlsFiles) -> None:
        self._acl_path = acl_path
        self._reload_command = list(reload_command)
        self._host = host
        self._port = port
        self._tls = hub_tls

    def sync(self, devices: Sequence[str]) -> None:
        """Write the ACL for ``devices`` and have the broker read it (and the CRL) again."""
        write_atomic(self._acl_path, device_acl(devices).encode())
        self._acl_path.chmod(0o644)  # the broker reads it as its own user
        if not self._reload_command:
            return
        try:
            done = subprocess.run(self._reload_command, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PkiError(f"broker reload {self._reload_command}: {exc}") from exc
        if done.returncode != 0:
            raise PkiError(f"broker reload {self._reload_command} exited {done.returncode}: {done.stderr.strip()}")
        logger.info("broker: ACL of %d devices written to %s and reloaded", len(devices), self._acl_path)

    def cut(self, device_id: str) -> None:
        """End the device's live MQTT session now, by taking it over with a clean session and leaving."""
        connected = threading.Event()
        client = new_client(device_id, clean_session=True, tls=self._tls)
        client.reconnect_delay_set(1, 1)

        def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
            if not getattr(reason, "is_failure", False):
                connected.set()

        client.on_connect = on_connect
        client.connect_async(self._host, self._port, keepalive=10)
        client.loop_start()
        try:
            if not connected.wait(CUT_TIMEOUT_S):
                raise PkiError(
                    f"could not reach the broker's hub listener {self._host}:{self._port} to cut {device_id}"
                )
        finally:
            client.disconnect()
            client.loop_stop()
        logger.warning("broker: %s's MQTT session cut", device_id)
