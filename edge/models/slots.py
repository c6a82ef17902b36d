"""The device's installed bundles, and the one small file that says which is active.

    <fleet state dir>/bundles/<bundle id>/     a complete, verified bundle: bundle.json and its files
    <fleet state dir>/staging/<bundle id>/     a bundle being downloaded (files as <name>.part until checked)
    <fleet state dir>/slots.json               active and previous bundle, the targets-key version accepted,
                                               the update in progress (its step) and the probation baseline

slots.json is replaced atomically (``common.files.write_atomic``) and a bundle folder appears by one rename, so a
kill -9 at any moment leaves the old state or the new. At start, ``recover`` checks that the active bundle is
complete (every file present with its size and sha256); if it is not, the previous one is used, then the model
the device was installed with: the device always has exactly one complete active model.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from common.files import write_atomic
from edge.models.download import sha256_of
from protocol.bundle import BundleEnvelope, Manifest

logger = logging.getLogger(__name__)

HISTORY = 20


@dataclass(frozen=True)
class SlotState:
    active: Optional[str] = None
    """The active bundle's id; None: the model in the device's own config."""
    previous: Optional[str] = None
    key_version: int = 0
    step: str = ""
    """The update in progress, if any: the step it reached (downloading, verifying, preparing, swap, probation)."""
    update: dict[str, Any] = field(default_factory=dict)
    """That update: bundle_id, rollout_id, release, started_at."""
    baseline: Optional[dict[str, Any]] = None
    """The old model's quality before the swap, for a probation that a restart interrupted."""
    history: tuple[dict[str, Any], ...] = ()


class Slots:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._file = folder / "slots.json"

    def bundle_dir(self, bundle_id: str) -> Path:
        return self.folder / "bundles" / bundle_id

    def staging_dir(self, bundle_id: str) -> Path:
        return self.folder / "staging" / bundle_id

    def load(self) -> SlotState:
        try:
            raw = json.loads(self._file.read_text())
            return SlotState(**{**raw, "history": tuple(raw.get("history", ()))})
        except FileNotFoundError:
            return SlotState()
        except (OSError, ValueError, TypeError) as exc:
            logger.error("models: %s unreadable (%s); starting from the model in the config", self._file, exc)
            return SlotState()

    def save(self, state: SlotState) -> None:
        body = asdict(state)
        body["history"] = list(state.history)[-HISTORY:]
        write_atomic(self._file, json.dumps(body, indent=1).encode())

    def note(self, state: SlotState, event: dict[str, Any]) -> SlotState:
        return replace(state, history=(*state.history, event)[-HISTORY:])

    def manifest(self, bundle_id: str) -> Optional[Manifest]:
        """The bundle's manifest if the bundle is complete on disk (every file with its size and sha256)."""
        folder = self.bundle_dir(bundle_id)
        if not (folder / "bundle.json").exists():
            return None  # not installed (yet)
        try:
            envelope = BundleEnvelope.model_validate_json((folder / "bundle.json").read_text())
            manifest = Manifest.model_validate(envelope.manifest.signed)
        except (OSError, ValueError) as exc:
            logger.error("models: bundle %s is not complete: %s", bundle_id, exc)
            return None
        for name, entry in manifest.files.items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != entry.size or sha256_of(path) != entry.sha256:
                logger.error("models: bundle %s: %s is missing or damaged", bundle_id, name)
                return None
        return manifest

    def install(self, bundle_id: str, envelope: BundleEnvelope) -> Path:
        """The staged files become the bundle's folder, in one rename; returns it."""
        staging, target = self.staging_dir(bundle_id), self.bundle_dir(bundle_id)
        write_atomic(staging / "bundle.json", envelope.model_dump_json(indent=1).encode())
        if target.exists():  # a copy from an interrupted earlier install; the staged one is complete
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        return target

    def recover(self) -> tuple[SlotState, str]:
        """The state at start, with the active bundle checked; and the step a restart interrupted, if any."""
        state = self.load()
        interrupted = state.step
        for candidate in (state.active, state.previous):
            if candidate is None or self.manifest(candidate) is not None:
                break
            logger.error("models: bundle %s cannot be used; falling back", candidate)
            state = replace(state, active=state.previous, previous=None)
        if state.active is not None and self.manifest(state.active) is None:
            state = replace(state, active=None, previous=None)
        if interrupted in ("swap",):
            state = replace(state, step="", baseline=None)  # the swap did not happen on disk: the old model runs
        self.save(state)
        return state, interrupted

    def prune(self, state: SlotState) -> None:
        """Delete bundles that are neither active nor previous, and staging folders of no update in progress."""
        keep = {state.active, state.previous, state.update.get("bundle_id") if state.step else None}
        for kind in ("bundles", "staging"):
            for path in (self.folder / kind).glob("*"):
                if path.name not in keep:
                    shutil.rmtree(path, ignore_errors=True)
