"""The fleet's tables in the hub's SQLite file (WAL): devices, settings by scope, and the audit log.

devices    one row per device: what it reported (group, tags, class, runtime, active model, the desired
           version it applied or refused), its last heartbeat, availability, session, and the desired
           state the hub computed for it (settings and version counter)
settings   the operators' settings by scope: ("all", ""), ("group", g), ("tag", t), ("device", id)
audit      every admin change, with who made it
alerts     what the console's alert check raised (a device silent, an escalation-rate jump, a rollout aborted):
           one row per alert id, raised and perhaps cleared, and whether the webhook has heard of its last change
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
    (
        "CREATE TABLE IF NOT EXISTS alerts (alert_id TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL,"
        " message TEXT NOT NULL, raised_at REAL NOT NULL, cleared_at REAL, notified INTEGER NOT NULL DEFAULT 0)",
    ),
)


@dataclass(frozen=True)
class Alert:
    alert_id: str
    """kind:subject, e.g. silent:cam-7"""
    kind: str
    """silent, escalation_jump, rollout_aborted"""
    subject: str
    """the device or rollout it is about"""
    message: str
    raised_at: float
    cleared_at: Optional[float] = None
    notified: bool = False
    """whether the webhook took its last change"""

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def view(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "subject": self.subject,
            "message": self.message,
            "raised_at": self.raised_at,
            "cleared_at": self.cleared_at,
            "active": self.active,
        }


_ALERT_COLUMNS = "alert_id, kind, subject, message, raised_at, cleared_at, notified"


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

    # -- alerts -------------------------------------------------------------------------------------------------

    def alerts(self, active: Optional[bool] = None, limit: int = 200) -> list[Alert]:
        """Newest raised first; active=True: not cleared."""
        where = {None: "TRUE", True: "cleared_at IS NULL", False: "cleared_at IS NOT NULL"}[active]
        with self.connection() as db:
            rows = db.execute(
                f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE {where} ORDER BY raised_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_alert(r) for r in rows]

    def raise_alert(self, kind: str, subject: str, message: str, at: float) -> Optional[Alert]:
        """Raise kind:subject, unless it is raised already; the alert if it is new (or raised again)."""
        alert_id = f"{kind}:{subject}"
        with self.transaction() as db:
            found = db.execute("SELECT cleared_at FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
            if found is not None and found[0] is None:
                return None
            db.execute(
                upsert("alerts", ("alert_id", "kind", "subject", "message", "raised_at", "cleared_at", "notified"),
                       ("alert_id",)),
                (alert_id, kind, subject, message, at, None, 0),
            )  # fmt: skip
        return Alert(alert_id, kind, subject, message, at)

    def clear_alert(self, alert_id: str, at: float) -> Optional[Alert]:
        """Clear a raised alert; the alert if it was raised."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE alerts SET cleared_at = ?, notified = 0 WHERE alert_id = ? AND cleared_at IS NULL",
                (at, alert_id),
            ).rowcount
            found = db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
        return _alert(found) if changed and found else None

    def unnotified_alerts(self) -> list[Alert]:
        with self.connection() as db:
            rows = db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE notified = 0 ORDER BY raised_at").fetchall()
        return [_alert(r) for r in rows]

    def mark_notified(self, alert: Alert) -> None:
        """The webhook took this change of the alert (not a later one: a change since then is still to send)."""
        cleared, params = ("cleared_at = ?", (alert.cleared_at,)) if alert.cleared_at else ("cleared_at IS NULL", ())
        with self.connection() as db:
            db.execute(
                f"UPDATE alerts SET notified = 1 WHERE alert_id = ? AND raised_at = ? AND {cleared}",
                (alert.alert_id, alert.raised_at, *params),
            )


def _alert(row: tuple[Any, ...]) -> Alert:
    values = list(row)
    values[6] = bool(values[6])
    return Alert(*values)


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
