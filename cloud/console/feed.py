"""What the console's pages show, shaped from the hub's stores: one row per device for the Fleet page, and each
device's recent heartbeats for its sparkline and charts.

One ``FleetFeed`` per hub replica reads the inventory at most once a second, however many browsers watch (each
event stream and each page load shares that read), and keeps the last HISTORY heartbeats of every device in
memory. The inventory is in the fleet store, so every replica's feed shows the whole fleet; a replica that
starts has no history yet and draws sparklines from the heartbeats it sees from then on.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from cloud.fleet.service import FleetService
from cloud.fleet.store import Device

HISTORY = 60  # heartbeats kept per device (at the devices' default 5 s: five minutes)
FRESH_S = 1.0  # the inventory is read again when the last read is older than this


def _rounded(value: Any, digits: int = 2) -> Optional[float]:
    return round(float(value), digits) if isinstance(value, (int, float)) else None


class FleetFeed:
    def __init__(self, fleet: Callable[[], FleetService], clock: Callable[[], float] = time.time) -> None:
        self._fleet = fleet
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._rows: list[dict[str, Any]] = []
        self._devices: dict[str, Device] = {}
        self._history: dict[str, collections.deque[tuple[float, dict[str, Any]]]] = {}

    def rows(self) -> list[dict[str, Any]]:
        """Every device's row, as of at most FRESH_S ago."""
        with self._lock:
            now = self._clock()
            if now - self._read_at >= FRESH_S:
                self._read(now)
            return self._rows

    def device(self, device_id: str) -> Optional[Device]:
        self.rows()
        with self._lock:
            return self._devices.get(device_id)

    def history(self, device_id: str) -> list[dict[str, Any]]:
        """The device's last heartbeats, oldest first: ``at`` and the heartbeat's figures."""
        self.rows()
        with self._lock:
            return [{"at": at, **figures} for at, figures in self._history.get(device_id, ())]

    def _read(self, now: float) -> None:
        service = self._fleet()
        devices = service.store.devices()
        rows = []
        for device in devices:
            self._remember(device)
            rows.append(self._row(service, device, now))
        self._devices = {d.device_id: d for d in devices}
        for gone in self._history.keys() - self._devices.keys():
            del self._history[gone]
        self._rows, self._read_at = rows, now

    def _remember(self, device: Device) -> None:
        telemetry, at = device.telemetry, device.telemetry_at
        if telemetry is None or at is None:
            return
        history = self._history.setdefault(device.device_id, collections.deque(maxlen=HISTORY))
        if history and history[-1][0] >= at:
            return
        figures = {
            name: _rounded(telemetry.get(name))
            for name in (
                "fps",
                "escalations_per_s",
                "fallbacks_per_s",
                "outbox_rows",
                "outbox_oldest_age_s",
                "inference_p95_ms",
                "cpu_percent",
                "memory_mb",
                "judge_threshold",
            )
        }
        history.append((at, figures))

    def _row(self, service: FleetService, device: Device, now: float) -> dict[str, Any]:
        telemetry = device.telemetry or {}
        model = device.model or {}
        update = device.update or {}
        rollout = ""
        if update.get("rollout_id"):
            rollout = f"{update['rollout_id']}: {update.get('state', '')}"
            if update.get("state") == "downloading":
                rollout += f" {100 * float(update.get('progress', 0.0)):.0f}%"
        history = self._history.get(device.device_id, ())
        return {
            "device_id": device.device_id,
            "status": service.status(device),
            "last_seen": device.last_seen,
            "last_seen_age_s": round(now - device.last_seen, 1),
            "group": device.group,
            "tags": list(device.tags),
            "device_class": device.device_class,
            "model": model.get("model_id", ""),
            "version": model.get("version", ""),
            "backend": model.get("backend", ""),
            "fallback": model.get("fallback", ""),
            "rollout": rollout,
            "escalations_per_s": _rounded(telemetry.get("escalations_per_s")),
            "escalation_spark": [figures["escalations_per_s"] or 0.0 for _, figures in history],
            "fallbacks_per_s": _rounded(telemetry.get("fallbacks_per_s")),
            "outbox_rows": telemetry.get("outbox_rows"),
            "outbox_oldest_age_s": _rounded(telemetry.get("outbox_oldest_age_s"), 1),
            "fps": _rounded(telemetry.get("fps"), 1),
            "camera_fps": {k: _rounded(v, 1) for k, v in sorted((telemetry.get("camera_fps") or {}).items())},
        }
