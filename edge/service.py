"""Talking to systemd: readiness, the watchdog, and stopping (``Type=notify``, ``WatchdogSec=``).

The protocol is one datagram per message to the socket named by
``$NOTIFY_SOCKET`` (sd_notify(3)); outside systemd that variable is unset and
every call does nothing. The watchdog must be pinged from the frame loop
itself, so a loop that stalls (a hung camera read, a stuck model) stops the
pings and systemd restarts the service.

Written out rather than taken from a package: the protocol is these few
lines, and python-systemd needs libsystemd headers to build, which a Jetson
image may not have.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Optional

logger = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: Optional[dict[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        if self._address and self._address.startswith("@"):  # an abstract socket
            self._address = "\0" + self._address[1:]
        usec = env.get("WATCHDOG_USEC")
        # Ping at a third of the watchdog's period, as sd_watchdog_enabled(3) advises (half is the limit).
        self.watchdog_interval_s: Optional[float] = int(usec) / 3e6 if usec and usec.isdigit() else None
        self._last_ping = 0.0
        self._socket: Optional[socket.socket] = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the frame loop on a notify socket that is not being read.
            self._socket.sendto(message.encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            logger.warning("systemd notify %r failed: %s", message, exc)

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Ping the watchdog, at most once per interval (cheap enough to call every frame)."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
