"""The runtime's side of a model update: a detector for a bundle (or for the device's own model), put into the
frame loop between two frames, and what the device reports as its active model."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from common.errors import InferenceError
from edge.config import DetectorConfig, EdgeConfig, fleet_state_dir
from edge.detectors import create_detector
from edge.detectors.base import Detector
from edge.models import prepare, verify
from edge.models.agent import Identity
from protocol import fleet
from protocol.bundle import Manifest

logger = logging.getLogger(__name__)


class ModelHost:
    def __init__(
        self,
        config: EdgeConfig,
        identity: Identity,
        current: Callable[[], Detector],
        put: Callable[[Detector], Detector],
        swapped: Callable[[Optional[Manifest]], None],
    ) -> None:
        """``current``: the detector the frame loop runs; ``put``: make another the one, returning the old;
        ``swapped``: told the new model's manifest (None: the device's own) once it is in."""
        self._config = config
        self._identity = identity
        self._current = current
        self._put = put
        self._swapped = swapped
        self.manifest: Optional[Manifest] = None
        """The active bundle's manifest; None while the model in the device's own config runs."""
        self._own_sha256: Optional[str] = None

    def detector_config(self, manifest: Manifest, folder: Path) -> DetectorConfig:
        engines = fleet_state_dir(self._config) / "engines"
        return prepare.detector_config(self._config.detector, manifest, folder, self._identity.device_class, engines)

    def prepare(self, manifest: Optional[Manifest], folder: Optional[Path]) -> Detector:
        """A new detector, loaded and warmed up beside the running one (the updater's thread); with no manifest,
        the model in the device's own config. InferenceError if it cannot load."""
        config = self._config.detector if manifest is None or folder is None else self.detector_config(manifest, folder)
        detector = create_detector(config)
        try:
            detector.start()
        except InferenceError:
            detector.close()
            raise
        return detector

    def swap(self, detector: Detector, manifest: Optional[Manifest]) -> Detector:
        """The next frame runs on ``detector``; the one it replaces is returned, still loaded (instant rollback)."""
        old = self._put(detector)
        self.manifest = manifest
        self._swapped(manifest)
        logger.info("models: the frame loop now runs %s", detector.describe())
        return old

    def standing(self, release: int, key_version: int) -> verify.Standing:
        return verify.Standing(self._config.device_id, self._identity.device_class, release, key_version)

    def active_model(self) -> fleet.ActiveModel:
        current = self._current()
        backend, fallback = current.engine(), current.fallback()
        manifest = self.manifest
        if manifest is not None:
            return fleet.ActiveModel(
                model_id=manifest.model.model_id,
                version=manifest.version,
                sha256=manifest.files[manifest.model.file].sha256,
                backend=backend,
                bundle_id=f"{manifest.name}-{manifest.release}",
                release=manifest.release,
                fallback=fallback,
            )
        path = self._config.detector.model_path
        return fleet.ActiveModel(
            model_id=path.stem, sha256=self._own_model_sha256(), backend=backend, fallback=fallback
        )

    def _own_model_sha256(self) -> str:
        if self._own_sha256 is None:
            try:
                self._own_sha256 = hashlib.sha256(self._config.detector.model_path.read_bytes()).hexdigest()
            except OSError:
                self._own_sha256 = ""
        return self._own_sha256
