"""Rollouts on disk (beside the fleet's tables): one row per rollout (its spec, state and timeline as JSON) and
one per device in it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from cloud.database import Location, Store, upsert

MIGRATIONS = (
    (
        "CREATE TABLE IF NOT EXISTS rollouts (rollout_id TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,"
        " wave INTEGER NOT NULL, wave_done_at REAL, created_at REAL NOT NULL, created_by TEXT NOT NULL,"
        " updated_at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '', baseline TEXT NOT NULL DEFAULT '{}',"
        " timeline TEXT NOT NULL DEFAULT '[]')",
        "CREATE TABLE IF NOT EXISTS rollout_devices (rollout_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " wave INTEGER NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0, reason TEXT NOT NULL"
        " DEFAULT '', detail TEXT NOT NULL DEFAULT '', from_bundle TEXT NOT NULL DEFAULT '', started_at REAL,"
        " updated_at REAL NOT NULL, PRIMARY KEY (rollout_id, device_id))",
    ),
)


@dataclass
class RolloutRow:
    rollout_id: str
    spec: dict[str, Any]
    state: str
    wave: int
    wave_done_at: Optional[float]
    created_at: float
    created_by: str
    updated_at: float
    reason: str = ""
    baseline: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DeviceRow:
    rollout_id: str
    device_id: str
    wave: int
    state: str
    progress: float = 0.0
    reason: str = ""
    detail: str = ""
    from_bundle: str = ""
    started_at: Optional[float] = None
    updated_at: float = 0.0


_R = ("rollout_id", "spec", "state", "wave", "wave_done_at", "created_at", "created_by", "updated_at", "reason",
      "baseline", "timeline")  # fmt: skip
_D = ("rollout_id", "device_id", "wave", "state", "progress", "reason", "detail", "from_bundle", "started_at",
      "updated_at")  # fmt: skip
_R_JSON = ("spec", "baseline", "timeline")


class RolloutStore(Store):
    def __init__(self, location: Location) -> None:
        super().__init__(location, "rollout store", MIGRATIONS)

    def put(self, rollout: RolloutRow, devices: Optional[list[DeviceRow]] = None) -> None:
        """Write a rollout (and some of its devices) in one transaction."""
        values = [json.dumps(getattr(rollout, c)) if c in _R_JSON else getattr(rollout, c) for c in _R]
        with self.transaction() as db:
            db.execute(upsert("rollouts", _R, ("rollout_id",)), values)
            for device in devices or ():
                db.execute(upsert("rollout_devices", _D, ("rollout_id", "device_id")), [getattr(device, c) for c in _D])

    def put_devices(self, devices: list[DeviceRow]) -> None:
        """Write some devices' rows of a rollout, not the rollout's own (a device's report: any replica may take
        it, while the leader moves the rollout)."""
        with self.transaction() as db:
            for device in devices:
                db.execute(upsert("rollout_devices", _D, ("rollout_id", "device_id")), [getattr(device, c) for c in _D])

    def get(self, rollout_id: str) -> Optional[RolloutRow]:
        with self.connection() as db:
            row = db.execute(f"SELECT {', '.join(_R)} FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        return _rollout(row) if row else None

    def rollouts(self, states: Optional[tuple[str, ...]] = None) -> list[RolloutRow]:
        with self.connection() as db:
            rows = db.execute(f"SELECT {', '.join(_R)} FROM rollouts ORDER BY created_at").fetchall()
        found = [_rollout(r) for r in rows]
        return [r for r in found if states is None or r.state in states]

    def devices(self, rollout_id: str) -> list[DeviceRow]:
        return self._device_rows("rollout_id = ? ORDER BY wave, device_id", rollout_id)

    def rows_of_device(self, device_id: str) -> list[DeviceRow]:
        """One device's row in every rollout that reached it (its model history), newest change first."""
        return self._device_rows("device_id = ? ORDER BY updated_at DESC", device_id)

    def _device_rows(self, where: str, value: str) -> list[DeviceRow]:
        with self.connection() as db:
            found = db.execute(f"SELECT {', '.join(_D)} FROM rollout_devices WHERE {where}", (value,)).fetchall()
        return [DeviceRow(*r) for r in found]


def _rollout(row: tuple[Any, ...]) -> RolloutRow:
    values = dict(zip(_R, row, strict=True))
    for name in _R_JSON:
        values[name] = json.loads(values[name])
    return RolloutRow(**values)
