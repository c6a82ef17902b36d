"""The device's side of desired and reported state.

    hub: tandem/v1/devices/{id}/desired (retained, version n)
      -> decode, check it is for this device and newer than what was applied
      -> merge over the device's own config and validate (``settings.merge``); refused: nothing changes
      -> saved to <fleet state dir>/desired.json (atomically), then handed to the runtime, which uses it
         from the next frame on
      -> tandem/v1/devices/{id}/reported (retained): applied_version n, or refused_version n with the reason

The saved version is applied again at the next start, before the broker is reached, so a restart does not
undo the hub's settings; a device that was offline gets the retained desired state when it reconnects.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from common.files import write_atomic
from edge.comms.link import Handled
from edge.config import EdgeConfig
from edge.models.settings import HotSettings, SettingsRefused, merge
from edge.models.updater import Target
from protocol import fleet
from protocol.errors import ProtocolError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """What the device says about itself in every report."""

    group: str
    tags: tuple[str, ...]
    device_class: str
    runtime_version: str

    @classmethod
    def of(cls, config: EdgeConfig) -> Identity:
        """Group, tags and class from the config; the class, when not set, from the machine and the backend."""
        return cls(
            group=config.fleet.group,
            tags=tuple(config.fleet.tags),
            device_class=config.fleet.device_class or f"{platform.machine() or 'unknown'}/{accelerator(config)}",
            runtime_version=runtime_version(),
        )


def accelerator(config: EdgeConfig) -> str:
    """cpu, cuda or trt: what the configured backend runs on (the report's model.backend says what really does)."""
    if config.detector.type == "tensorrt":
        return "trt"
    wanted = " ".join(config.detector.providers)
    return "trt" if "Tensorrt" in wanted else "cuda" if "CUDA" in wanted else "cpu"


def runtime_version() -> str:
    try:
        return importlib.metadata.version("tandem")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


@dataclass
class _Books:
    applied: Optional[fleet.Desired] = None
    refused_version: int = 0
    refused_reason: str = ""


class DesiredStateAgent:
    def __init__(
        self,
        config: EdgeConfig,
        state_dir: Path,
        identity: Identity,
        *,
        apply: Callable[[HotSettings], None],
        active_model: Callable[[], fleet.ActiveModel],
        publish_reported: Callable[[bytes], None],
        want_model: Callable[[Target], None] = lambda _target: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``apply``: the runtime takes new settings; ``want_model``: the model updater takes the desired model."""
        self._config = config
        self._file = state_dir / "desired.json"
        self._identity = identity
        self._apply = apply
        self._active_model = active_model
        self._publish = publish_reported
        self._want_model = want_model
        self._clock = clock
        self._bundle_judge: dict[str, Any] = {}
        self._update: Optional[fleet.UpdateStatus] = None
        self._lock = threading.Lock()
        self._books = _Books()

    @property
    def applied_version(self) -> int:
        return self._books.applied.version if self._books.applied else 0

    def start(self) -> None:
        """Apply the settings saved by the last run, if any (no I/O but the one file)."""
        books = self._load()
        if books.applied is not None:
            try:
                self._apply(merge(self._config, books.applied.settings, self._bundle_judge))
                logger.info("fleet: hub settings version %d applied from %s", books.applied.version, self._file)
            except SettingsRefused as exc:  # the device's own config changed under them
                logger.error("fleet: saved hub settings no longer apply, the device's own stand: %s", exc)
                books = _Books(None, books.applied.version, str(exc))
        self._books = books

    def on_desired(self, payload: bytes) -> Handled:
        """A desired state from the hub (paho's thread). Always acknowledged: a bad one never becomes good."""
        try:
            desired = fleet.decode(payload, fleet.Desired)
        except ProtocolError as exc:
            logger.error("fleet: desired state dropped: %s", exc)
            return Handled.ACK
        if desired.device_id != self._config.device_id:
            logger.error("fleet: desired state for %s on this device's topic; dropped", desired.device_id)
            return Handled.ACK
        if desired.bundle is not None or desired.own_model:  # every time: the target is idempotent
            self._want_model(Target(desired.bundle, desired.rollout_id, desired.rollback))
        with self._lock:
            self._take(desired)
        self.report()
        return Handled.ACK

    def use_bundle_judge(self, judge: dict[str, Any]) -> None:
        """A new model came with its own judge settings: the hub's settings go on top of them again."""
        with self._lock:
            self._bundle_judge = dict(judge)
            applied = self._books.applied
            try:
                self._apply(merge(self._config, applied.settings if applied else {}, self._bundle_judge))
            except SettingsRefused as exc:
                logger.error("fleet: the bundle's judge settings do not apply, the device's own stand: %s", exc)
                self._apply(merge(self._config, {}))

    def update_status(self, status: fleet.UpdateStatus) -> None:
        """Where the model update stands (the updater's thread): reported at once."""
        self._update = status
        self.report()

    def _take(self, desired: fleet.Desired) -> None:
        books = self._books
        if desired.version <= max(self.applied_version, books.refused_version):
            return  # the retained copy again, after a reconnect: already dealt with
        try:
            settings = merge(self._config, desired.settings, self._bundle_judge)
        except SettingsRefused as exc:
            logger.error("fleet: desired version %d refused: %s", desired.version, exc)
            self._books = _Books(books.applied, desired.version, str(exc))
            self._save()
            return
        self._books = _Books(desired, books.refused_version, books.refused_reason)
        self._save()  # saved first: a crash between the two applies it at the next start
        self._apply(settings)
        logger.info("fleet: desired version %d applied: %s", desired.version, json.dumps(desired.settings))

    def report(self) -> None:
        """Publish what this device is and what it applied (retained); safe to call from any thread."""
        books = self._books
        reported = fleet.Reported(
            device_id=self._config.device_id,
            sent_at=self._clock(),
            group=self._identity.group,
            tags=self._identity.tags,
            device_class=self._identity.device_class,
            runtime_version=self._identity.runtime_version,
            model=self._active_model(),
            applied_version=books.applied.version if books.applied else 0,
            refused_version=books.refused_version,
            refused_reason=books.refused_reason,
            settings=books.applied.settings if books.applied else {},
            update=self._update,
        )
        try:
            self._publish(fleet.encode(reported))
        except ConnectionError as exc:  # it goes out again at the next connect
            logger.warning("fleet: report not queued: %s", exc)

    # -- the state file ------------------------------------------------------------------------------------

    def _save(self) -> None:
        books = self._books
        body = {
            "applied": json.loads(fleet.encode(books.applied)) if books.applied else None,
            "refused_version": books.refused_version,
            "refused_reason": books.refused_reason,
        }
        write_atomic(self._file, json.dumps(body, indent=1).encode())

    def _load(self) -> _Books:
        if not self._file.exists():
            return _Books()
        try:
            body = json.loads(self._file.read_text())
            applied = body.get("applied")
            return _Books(
                fleet.decode(json.dumps(applied).encode(), fleet.Desired) if applied else None,
                int(body.get("refused_version", 0)),
                str(body.get("refused_reason", "")),
            )
        except (OSError, ValueError, ProtocolError) as exc:  # the hub's retained copy brings them back
            logger.error("fleet: %s unreadable, starting from the device's own settings: %s", self._file, exc)
            return _Books()
