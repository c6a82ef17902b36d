"""The fleet service: keeps the inventory from what devices say, moves their sessions, and computes and
publishes each device's desired state.

    reported (retained)   -> group, tags, class, runtime, active model, applied/refused desired version
    telemetry             -> the last heartbeat; last_seen
    availability          -> online / offline (the device's last will)
    an escalation         -> session ACTIVE (kept in memory, written at the next check: not on the hot path)
    check (every few s)   -> quiet devices to SLEEP; escalation times written
    settings by scope     -> every affected device's desired settings merged (all < group < tag < device);
                             a change bumps its version and is published retained on .../desired

Every method is safe to call from paho's thread or the event loop: one lock around each read-modify-write,
and one store transaction, so replicas sharing PostgreSQL take turns on it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Optional

from cloud.config import FleetConfig
from cloud.errors import DeviceNotFound, HubError, InvalidSettings
from cloud.fleet.store import Device, FleetStore, Scope, Session, SettingsLayer
from cloud.metrics import HubMetrics
from protocol import fleet
from protocol.bundle import BundleEnvelope
from protocol.errors import InvalidTopic
from protocol.topics import validate_device_id

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
"""(device_id, Desired message) -> queued for the broker, retained."""


def merged(layers: list[SettingsLayer], device: Device) -> dict[str, dict[str, Any]]:
    """A device's settings: every layer that covers it, narrowest last, merged field by field per section."""
    rank = {Scope.ALL: 0, Scope.GROUP: 1, Scope.TAG: 2, Scope.DEVICE: 3}
    covering = [
        layer
        for layer in layers
        if layer.scope is Scope.ALL
        or (layer.scope is Scope.GROUP and layer.name == device.group)
        or (layer.scope is Scope.TAG and layer.name in device.tags)
        or (layer.scope is Scope.DEVICE and layer.name == device.device_id)
    ]
    result: dict[str, dict[str, Any]] = {}
    for layer in sorted(covering, key=lambda layer: (rank[layer.scope], layer.name)):
        for section, fields in layer.settings.items():
            result.setdefault(section, {}).update(fields)
    return result


def _no_bundles(bundle_id: str) -> BundleEnvelope:
    raise HubError(f"no bundle store: cannot send {bundle_id}")


class FleetService:
    def __init__(
        self,
        store: FleetStore,
        config: FleetConfig,
        publish: Publish,
        metrics: HubMetrics,
        *,
        bundle: Callable[[str], BundleEnvelope] = _no_bundles,
        on_new_device: Callable[[Device], None] = lambda _device: None,
        on_update: Callable[[str, dict[str, Any]], None] = lambda _device_id, _update: None,
        on_sleep: Callable[[str], None] = lambda _device_id: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``bundle``: a bundle's envelope (with the hub's base_url) by id; ``on_update``: told each device's report
        on a bundle (the rollouts); ``on_sleep``: told each device that goes to SLEEP (its cache entries go)."""
        self.store = store
        self.config = config
        self._publish = publish
        self._metrics = metrics
        self._on_new_device = on_new_device
        self._bundle = bundle
        self._on_update = on_update
        self._on_sleep = on_sleep
        self._clock = clock
        self._lock = threading.RLock()
        self._escalated: dict[str, float] = {}  # device -> last escalation, not yet written
        self._sessions: dict[str, Session] = {}  # what the store says, kept here so an escalation reads no row

    def start(self) -> None:
        self._sessions = {d.device_id: d.session for d in self.store.devices()}

    # -- what devices say -------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time: among this replica's threads (the lock) and among replicas sharing the store (a
        store transaction, which every store call inside joins)."""
        with self._lock, self.store.transaction():
            yield

    def on_reported(self, reported: fleet.Reported) -> None:
        with self._locked():
            device = self._seen(reported.device_id)
            device = replace(
                device,
                group=reported.group,
                tags=tuple(reported.tags),
                device_class=reported.device_class,
                runtime_version=reported.runtime_version,
                model=reported.model.model_dump(),
                applied_version=reported.applied_version,
                refused_version=reported.refused_version,
                refused_reason=reported.refused_reason,
                reported_settings=reported.settings,
                update=reported.update.model_dump(mode="json") if reported.update else {},
            )
            self.store.put(device)
            # Its group or tags may have changed, or the broker may have lost the retained copy: say it again.
            self._update_desired(device, self.store.layers(), always_publish=True)
        if reported.update is not None:
            self._on_update(reported.device_id, device.update)
        self._count("reported")

    def on_telemetry(self, telemetry: fleet.Telemetry) -> None:
        with self._locked():
            device = self._seen(telemetry.device_id)
            beat = telemetry.model_dump(exclude={"schema_version", "device_id"})
            self.store.put(replace(device, telemetry=beat, telemetry_at=self._clock()))
        self._count("telemetry")

    def on_availability(self, device_id: str, online: bool) -> None:
        with self._locked():
            device = self._seen(device_id)
            self.store.put(replace(device, available=online, available_at=self._clock()))
        self._count("availability")
        logger.info("fleet: %s is %s", device_id, "online" if online else "offline")

    def on_escalation(self, device_id: str) -> None:
        """An escalation came in: the device is ACTIVE. No write unless its session changes."""
        now = self._clock()
        with self._lock:
            self._escalated[device_id] = now
            if self._sessions.get(device_id) is Session.ACTIVE:
                return
        with self._locked():
            device = self._seen(device_id)
            self.store.put(self._enter(replace(device, last_escalation_at=now), Session.ACTIVE, now))

    def bad_message(self, channel: str, error: Exception) -> None:
        self._count(channel, type(error).__name__)

    def _count(self, channel: str, outcome: str = "ok") -> None:
        self._metrics.fleet_messages.labels(channel=channel, outcome=outcome).inc()

    def _seen(self, device_id: str) -> Device:
        """The device's row with last_seen now; a device never seen before starts its session in INIT."""
        now = self._clock()
        device = self.store.get(device_id)
        if device is not None:
            return replace(device, last_seen=now)
        device = Device(device_id, first_seen=now, last_seen=now, session=Session.INIT, session_since=now)
        self._sessions[device_id] = Session.INIT
        self._metrics.sessions.labels(state=Session.INIT.value).inc()
        logger.info("fleet: new device %s (session INIT)", device_id)
        self._on_new_device(device)
        return device

    def _enter(self, device: Device, session: Session, now: float) -> Device:
        logger.info("fleet: %s session %s -> %s", device.device_id, device.session.value, session.value)
        self._sessions[device.device_id] = session
        self._metrics.sessions.labels(state=session.value).inc()
        return replace(device, session=session, session_since=now)

    # -- the periodic check -----------------------------------------------------------------------------------

    def check(self) -> None:
        """Write escalation times; a device quiet for sleep_after_s goes to SLEEP. Every replica runs it (each
        writes the escalations it saw); the sessions it keeps are then read again, since another replica may
        have changed one."""
        now = self._clock()
        with self._locked():
            escalated, self._escalated = self._escalated, {}
            devices = self.store.devices()
            for device in devices:
                seen_here = escalated.get(device.device_id)
                last = max(t for t in (seen_here, device.last_escalation_at, 0.0) if t is not None) or None
                quiet_since = last if last is not None else device.session_since
                changed = replace(device, last_escalation_at=last)
                if device.session is not Session.SLEEP and now - quiet_since >= self.config.sleep_after_s:
                    changed = self._enter(changed, Session.SLEEP, now)
                    self._on_sleep(device.device_id)
                elif device.session is Session.SLEEP and seen_here is not None and seen_here > device.session_since:
                    changed = self._enter(changed, Session.ACTIVE, now)  # another replica put it to sleep
                if changed != device:
                    self.store.put(changed)
                self._sessions[device.device_id] = changed.session

    # -- desired state ----------------------------------------------------------------------------------------

    def set_settings(self, scope: Scope, name: str, settings: dict[str, Any], who: str) -> list[str]:
        """Replace one scope's settings (empty: remove them); returns the devices whose desired state changed."""
        _check_settings(settings)
        name = _check_scope(scope, name)
        with self._locked():
            layer = SettingsLayer(scope, name, settings, self._clock(), who)
            self.store.set_layer(layer, {"settings": settings})
            layers = self.store.layers()
            changed = [d.device_id for d in self.store.devices() if self._update_desired(d, layers)]
        logger.info("fleet: %s set %s settings %s -> %d devices", who, scope.value, name or "*", len(changed))
        return changed

    def set_model(self, device_ids: list[str], model: dict[str, Any]) -> None:
        """The model these devices should run: {bundle_id, rollout_id, rollback} or {own_model: True, rollout_id};
        each gets a new desired version, published."""
        with self._locked():
            layers = self.store.layers()
            for device_id in device_ids:
                device = self.store.get(device_id)
                if device is not None:
                    self._update_desired(device, layers, model=model)

    def _update_desired(
        self,
        device: Device,
        layers: list[SettingsLayer],
        always_publish: bool = False,
        model: Optional[dict[str, Any]] = None,
    ) -> bool:
        settings = merged(layers, device)
        model = device.desired_model if model is None else model
        if settings != device.desired_settings or model != device.desired_model:
            # Above anything the device has seen, even if this store was lost and its counter started again.
            version = max(device.desired_version, device.applied_version, device.refused_version) + 1
            device = replace(device, desired_settings=settings, desired_model=model, desired_version=version)
            self.store.put(device)
        elif not (always_publish and device.desired_version > max(device.applied_version, device.refused_version)):
            return False  # unchanged, or the device has it already
        bundle_id = model.get("bundle_id")
        message = fleet.Desired(
            device_id=device.device_id,
            sent_at=self._clock(),
            version=device.desired_version,
            settings=settings,
            bundle=self._bundle(bundle_id) if bundle_id else None,
            rollout_id=model.get("rollout_id", ""),
            rollback=bool(model.get("rollback", False)),
            own_model=bool(model.get("own_model", False)),
        )
        self._publish(device.device_id, fleet.encode(message))
        self._metrics.desired_sent.inc()
        return True

    # -- views for the API ------------------------------------------------------------------------------------

    def status(self, device: Device) -> str:
        """online, silent (said online, but nothing heard for silent_after_s), offline, or unknown."""
        if device.available is False:
            return "offline"
        if self._clock() - device.last_seen > self.config.silent_after_s:
            return "silent"
        return "online" if device.available else "unknown"

    def view(self, device: Device) -> dict[str, Any]:
        now = self._clock()
        return {
            "device_id": device.device_id,
            "status": self.status(device),
            "last_seen_age_s": round(now - device.last_seen, 3),
            "group": device.group,
            "tags": list(device.tags),
            "device_class": device.device_class,
            "runtime_version": device.runtime_version,
            "model": device.model,
            "session": device.session.value,
            "session_since": device.session_since,
            "first_seen": device.first_seen,
            "last_seen": device.last_seen,
            "last_escalation_at": self._escalated.get(device.device_id, device.last_escalation_at),
            "telemetry": device.telemetry,
            "desired": {"version": device.desired_version, "settings": device.desired_settings},
            "reported": {
                "applied_version": device.applied_version,
                "refused_version": device.refused_version,
                "refused_reason": device.refused_reason,
                "settings": device.reported_settings,
            },
            "in_sync": device.applied_version == device.desired_version,
            "desired_model": device.desired_model,
            "update": device.update,
        }

    def find(
        self,
        *,
        group: Optional[str] = None,
        tag: Optional[str] = None,
        device_class: Optional[str] = None,
        status: Optional[str] = None,
        model: Optional[str] = None,
    ) -> list[Device]:
        return [
            d
            for d in self.store.devices()
            if (group is None or d.group == group)
            and (tag is None or tag in d.tags)
            and (device_class is None or d.device_class == device_class)
            and (status is None or self.status(d) == status)
            and (model is None or d.model.get("model_id") == model)
        ]

    def device(self, device_id: str) -> Device:
        found = self.store.get(device_id)
        if found is None:
            raise DeviceNotFound(f"no device {device_id}")
        return found

    def group_of(self, device_id: str) -> Optional[str]:
        """The group a device last reported, or None for a device the hub has not heard from."""
        found = self.store.get(device_id)
        return found.group if found is not None else None


def _check_settings(settings: Any) -> None:
    if not isinstance(settings, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in settings.items()
    ):
        raise InvalidSettings("settings are a mapping of sections (judge, escalation) to mappings of fields")


def _check_scope(scope: Scope, name: str) -> str:
    if scope is Scope.ALL:
        return ""
    try:
        return validate_device_id(name)  # groups and tags follow the device id's rule: they end up in queries
    except InvalidTopic as exc:
        raise InvalidSettings(f"{scope.value} name {name!r}: {exc}") from exc
