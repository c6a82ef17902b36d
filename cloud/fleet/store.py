"""The fleet's tables in the hub's SQLite file (WAL): devices, settings by scope, and the audit log.

devices    one row per device: what it reported (group, tags, class, runtime, active model, the desired
           version it applied or refused), its last heartbeat, availability, session, and the desired
           state the hub computed for it (settings and version counter)
settings   the operators' settings by scope: ("all", ""), ("group", g), ("tag", t), ("device", id)
audit      every admin change, with who made it
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from cloud.database import Connection, Location, Store, upsert


class Session(str, enum.Enum):
    """A device's session on the hub (seed 004): INIT at first contact, ACTIVE while it escalates, SLEEP once
    quiet for ``fleet.sleep_after_s``."""

    INIT = "INIT"
    ACTIVE = "ACTIVE"
    SLEEP = "SLEEP"


class Scope(str, enum.Enum):
    """Where a setting applies; a narrower scope wins: all < group < tag < device."""

    ALL = "all"
    GROUP = "group"
    TAG = "tag"
    DEVICE = "device"


@dataclass(frozen=True)
class Device:
    device_id: str
    first_seen: float
    last_seen: float
    session: Session
    session_since: float
    group: str = ""
    tags: tuple[str, ...] = ()
    device_class: str = ""
    runtime_version: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    """The active model as reported: model_id, version, sha256, backend."""
    available: Optional[bool] = None
    """The last availability message: True (online), False (offline, the last will), None (none seen)."""
    available_at: Optional[float] = None
    last_escalation_at: Optional[float] = None
    telemetry: Optional[dict[str, Any]] = None
    telemetry_at: Optional[float] = None
    applied_version: int = 0
    refused_version: int = 0
    refused_reason: str = ""
    reported_settings: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 0
    desired_settings: dict[str, Any] = field(default_factory=dict)
    desired_model: dict[str, Any] = field(default_factory=dict)
    """The model the hub wants it to run: bundle_id, rollout_id, rollback, own_model; empty: no opinion."""
    update: dict[str, Any] = field(default_factory=dict)
    """The device's last report on a bundle (protocol.fleet.UpdateStatus)."""


@dataclass(frozen=True)
class SettingsLayer:
    scope: Scope
    name: str
    settings: dict[str, dict[str, Any]]
    updated_at: float
    updated_by: str


_JSON = ("tags", "model", "telemetry", "reported_settings", "desired_settings", "desired_model", "update_status")
_COLUMNS = (
    "device_id", "first_seen", "last_seen", "session", "session_since", "grp", "tags", "device_class",
    "runtime_version", "model", "available", "available_at", "last_escalation_at", "telemetry", "telemetry_at",
    "applied_version", "refused_version", "refused_reason", "reported_settings", "desired_version", "desired_settings",
    "desired_model", "update_status",
)  # fmt: skip
MIGRATIONS = (
    (
        "CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, first_seen REAL NOT NULL,"
        " last_seen REAL NOT NULL, session TEXT NOT NULL, session_since REAL NOT NULL, grp TEXT NOT NULL DEFAULT '',"
        " tags TEXT NOT NULL DEFAULT '[]', device_class TEXT NOT NULL DEFAULT '', runtime_version TEXT NOT NULL"
        " DEFAULT '', model TEXT NOT NULL DEFAULT '{}', available INTEGER, available_at REAL, last_escalation_at REAL,"
        " telemetry TEXT, telemetry_at REAL, applied_version INTEGER NOT NULL DEFAULT 0, refused_version INTEGER NOT"
        " NULL DEFAULT 0, refused_reason TEXT NOT NULL DEFAULT '', reported_settings TEXT NOT NULL DEFAULT '{}',"
        " desired_version INTEGER NOT NULL DEFAULT 0, desired_settings TEXT NOT NULL DEFAULT '{}',"
        " desired_model TEXT NOT NULL DEFAULT '{}', update_status TEXT NOT NULL DEFAULT '{}')",
        "CREATE TABLE IF NOT EXISTS settings (scope TEXT NOT NULL, name TEXT NOT NULL, settings TEXT NOT NULL,"
        " updated_at REAL NOT NULL, updated_by TEXT NOT NULL, PRIMARY KEY (scope, name))",
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL,"
        " action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)",
    ),
)


class FleetStore(Store):
    def __init__(self, location: Location) -> None:
        super().__init__(location, "fleet store", MIGRATIONS)

    # -- devices -----------------------------------------------------------------------------------------------

    def get(self, device_id: str) -> Optional[Device]:
        with self.connection() as db:
            found = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return _device(found) if found else None

    def devices(self) -> list[Device]:
        with self.connection() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM devices ORDER BY device_id").fetchall()
        return [_device(r) for r in rows]

    def put(self, device: Device) -> None:
        """Insert or replace one device's row."""
        attribute = {"grp": "group", "update_status": "update"}
        values = [getattr(device, attribute.get(c, c)) for c in _COLUMNS]
        row = [
            json.dumps(list(v) if isinstance(v, tuple) else v) if c in _JSON and v is not None else v
            for c, v in zip(_COLUMNS, values, strict=True)
        ]
        row[_COLUMNS.index("session")] = device.session.value
        with self.connection() as db:
            db.execute(upsert("devices", _COLUMNS, ("device_id",)), row)

    # -- settings and audit -------------------------------------------------------------------------------------

    def layers(self) -> list[SettingsLayer]:
        with self.connection() as db:
            rows = db.execute("SELECT scope, name, settings, updated_at, updated_by FROM settings").fetchall()
        return [SettingsLayer(Scope(s), n, json.loads(body), at, by) for s, n, body, at, by in rows]

    def set_layer(self, layer: SettingsLayer, detail: dict[str, Any]) -> None:
        """Write (or, with no settings, delete) one scope's settings, and its audit entry, in one transaction."""
        with self.transaction() as db:
            if layer.settings:
                db.execute(
                    upsert("settings", ("scope", "name", "settings", "updated_at", "updated_by"), ("scope", "name")),
                    (layer.scope.value, layer.name, json.dumps(layer.settings), layer.updated_at, layer.updated_by),
                )
            else:
                db.execute("DELETE FROM settings WHERE scope = ? AND name = ?", (layer.scope.value, layer.name))
            self._audit(db, layer.updated_at, layer.updated_by, "settings", f"{layer.scope.value}:{layer.name}", detail)

    def audit(self, at: float, who: str, action: str, target: str, detail: dict[str, Any]) -> None:
        with self.connection() as db:
            self._audit(db, at, who, action, target, detail)

    @staticmethod
    def _audit(db: Connection, at: float, who: str, action: str, target: str, detail: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO audit (at, who, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            (at, who, action, target, json.dumps(detail, sort_keys=True)),
        )

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.connection() as db:
            found = db.execute(
                "SELECT at, who, action, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [
            {"at": at, "who": who, "action": action, "target": target, "detail": json.loads(detail)}
            for at, who, action, target, detail in found
        ]


def _device(row: tuple[Any, ...]) -> Device:
    values = dict(zip(_COLUMNS, row, strict=True))
    for name in _JSON:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    values["group"] = values.pop("grp")
    values["update"] = values.pop("update_status")
    values["tags"] = tuple(values["tags"])
    values["session"] = Session(values["session"])
    values["available"] = None if values["available"] is None else bool(values["available"])
    return Device(**values)
