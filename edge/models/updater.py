"""The push-down agent's model side: one background thread that takes the device from the model it runs to the
one the hub's desired state names, step by step, reporting each.

    VERIFYING    the signature chain and this device's policy (edge.models.verify), before any download
    DOWNLOADING  each file, resumable, checked as it arrives (edge.models.download); then installed by a rename
    PREPARING    the new detector loaded and warmed up beside the running one; the golden samples checked
    (swap)       between two frames: the next frame runs on the new model, the old one stays loaded
    PROBATION    the new model's frames against the old model's before the swap (edge.models.quality);
                 worse past the bounds: swapped back at once (ROLLED_BACK); else ACTIVE, and the old one freed
    FAILED       refused or broken at any step before the swap; the running model was never touched

The target is idempotent: "run bundle X" (or "run the model in my own config"), so the retained desired state can
arrive any number of times. A bundle that failed or was rolled back in a rollout is not tried again in that
rollout. slots.json records each step, so a kill -9 anywhere leaves one complete active model (``Slots.recover``)
and the next run says where it was interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from common.errors import InferenceError
from common.inference.golden import load_golden, mismatch
from common.signing import BundleRefused
from edge.config import ModelsConfig
from edge.detectors.base import Detector
from edge.models import failpoints, verify
from edge.models.download import Download, Limits
from edge.models.quality import Quality, Summary, verdict
from edge.models.slots import Slots, SlotState
from protocol.bundle import BundleEnvelope, Manifest, Refusal
from protocol.fleet import UpdateState, UpdateStatus

logger = logging.getLogger(__name__)

PROGRESS_REPORT_S = 1.0  # at most one downloading report a second
_OUTCOMES = {"active": UpdateState.ACTIVE, "failed": UpdateState.FAILED, "rolled_back": UpdateState.ROLLED_BACK}


@dataclass(frozen=True)
class Target:
    """What the hub wants running: a bundle, or (bundle None) the model in the device's own config."""

    bundle: Optional[BundleEnvelope]
    rollout_id: str = ""
    rollback: bool = False

    @property
    def bundle_id(self) -> Optional[str]:
        if self.bundle is None:
            return None
        signed = self.bundle.manifest.signed
        return f"{signed.get('name')}-{signed.get('release')}"


@dataclass(frozen=True)
class Host:
    """What the updater needs from the runtime."""

    prepare: Callable[[Optional[Manifest], Optional[Path]], Detector]
    """A started, warmed-up detector for a bundle's model (or, with None, the device's own)."""
    swap: Callable[[Detector, Optional[Manifest]], Detector]
    """Put it in the frame loop from the next frame on; returns the one it replaced (still loaded)."""
    standing: Callable[[int, int], verify.Standing]
    """(active release, key version) -> the device's standing."""
    on_status: Callable[[UpdateStatus], None]


class _Stop(Exception):
    """The target changed or the device is closing: the job in progress ends where it is."""


class ModelUpdater:
    def __init__(
        self, config: ModelsConfig, slots: Slots, quality: Quality, host: Host, ca_path: Optional[Path] = None
    ) -> None:
        """``ca_path``: the fleet CA, to check a secured hub's https bundle server against."""
        self._ca_path = ca_path
        self._config = config
        self._slots = slots
        self._quality = quality
        self._host = host
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._abort = threading.Event()
        self._closing = False
        self._target: Optional[Target] = None
        self._job: tuple[Optional[str], str] = (None, "")  # (bundle id, rollout id) being worked on
        self._state = SlotState()
        self._manifests: dict[Optional[str], Optional[Manifest]] = {None: None}
        self._thread = threading.Thread(target=self._run, name="edge-models", daemon=True)
        self._interrupted = ""

    # -- called by the runtime -----------------------------------------------------------------------------------

    def recover(self) -> tuple[Optional[Manifest], Optional[Path]]:
        """Read slots.json (checking the active bundle); the active bundle's manifest and folder, if any."""
        self._state, self._interrupted = self._slots.recover()
        active = self._state.active
        if active is None:
            return None, None
        manifest = self._slots.manifest(active)
        self._manifests[active] = manifest
        return manifest, self._slots.bundle_dir(active)

    @property
    def active_manifest(self) -> Optional[Manifest]:
        return self._manifests.get(self._state.active)

    def start(self) -> None:
        if self._interrupted:
            logger.warning("models: a restart interrupted the update at step %s", self._interrupted)
            self._publish(self._state.update.get("bundle_id", ""), UpdateState.PENDING, recovered=self._interrupted)
        elif self._state.history:  # the last update's outcome, so the hub's view survives this restart
            last = self._state.history[-1]
            state = _OUTCOMES.get(last.get("outcome", ""))
            if state is not None:
                self._host.on_status(
                    self._status(
                        last.get("bundle_id", ""),
                        state,
                        last.get("rollout_id", ""),
                        reason=last.get("reason", ""),
                        detail=last.get("detail", ""),
                    )
                )
        self._thread.start()

    def want(self, target: Target) -> None:
        """The hub's desired model (any thread). A change of target stops the job in progress."""
        with self._lock:
            if self._target == target:
                return
            self._target = target
            if self._job != (target.bundle_id, target.rollout_id):  # the job in progress is not this one
                self._abort.set()
        self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._abort.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(30)

    # -- the thread --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        if self._state.step == "probation":  # a restart during probation: it goes on, against the saved baseline
            self._resume_probation()
        while not self._closing:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                target = self._target
                self._abort.clear()
            if target is None or self._closing:
                continue
            self._job = (target.bundle_id, target.rollout_id)
            try:
                self._reach(target)
            except _Stop:
                logger.info("models: update to %s stopped: the target changed", target.bundle_id or "own model")
            except Exception:  # a bug must not end the thread: the next desired state tries again
                logger.exception("models: update to %s failed", target.bundle_id)
            finally:
                self._job = (None, "")

    def _reach(self, target: Target) -> None:
        bundle_id = target.bundle_id
        if bundle_id == self._state.active:
            if target.bundle is not None or self._state.active is None:
                self._publish(bundle_id or "", UpdateState.ACTIVE, target=target)
            return
        done = self._outcome(bundle_id, target.rollout_id)
        if done is not None:  # failed or rolled back in this rollout: said again, not tried again
            self._host.on_status(done)
            return
        if target.bundle is None:
            self._switch(target, None, None)
            return
        manifest = self._verify(target, target.bundle)
        if manifest is None:
            return
        folder = self._fetch(target, target.bundle, manifest)
        if folder is not None:
            self._switch(target, manifest, folder)

    def _verify(self, target: Target, bundle: BundleEnvelope) -> Optional[Manifest]:
        self._step(target, "verifying", UpdateState.VERIFYING)
        failpoints.pause("verifying")
        active = self.active_manifest
        standing = self._host.standing(active.release if active else 0, self._state.key_version)
        try:
            targets_key, manifest = verify.check(
                bundle, self._config, standing, rollback=target.rollback, now=time.time()
            )
        except BundleRefused as exc:
            self._fail(target, exc)
            return None
        if targets_key.version > self._state.key_version:  # a rotation: older targets keys are refused from now on
            self._save(replace(self._state, key_version=targets_key.version))
        return manifest

    def _fetch(self, target: Target, bundle: BundleEnvelope, manifest: Manifest) -> Optional[Path]:
        bundle_id = target.bundle_id or ""
        if self._slots.manifest(bundle_id) is not None:  # installed already (an earlier run got this far)
            return self._slots.bundle_dir(bundle_id)
        self._step(target, "downloading", UpdateState.DOWNLOADING)
        staging = self._slots.staging_dir(bundle_id)
        staging.mkdir(parents=True, exist_ok=True)
        limits = Limits(
            self._config.download_min_bytes_per_s,
            self._config.download_window_s,
            time.monotonic() + self._config.download_deadline_s,
            self._config.download_attempts,
            self._ca_path,
        )
        total, done, last = max(1, manifest.total_bytes), 0, 0.0

        def progress(have: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_REPORT_S:
                last = now
                share = min(1.0, (done + have) / total)
                logger.info("models: downloading %s: %.0f%% of %d bytes", bundle_id, 100 * share, total)
                self._publish(bundle_id, UpdateState.DOWNLOADING, target=target, progress=share)

        try:
            for name, entry in manifest.files.items():
                url = f"{bundle.base_url.rstrip('/')}/{name}"
                Download(url, staging / name, entry, limits, self._abort, progress).run()
                done += entry.size
        except BundleRefused as exc:
            if exc.reason is Refusal.ABORTED:
                raise _Stop() from exc
            self._fail(target, exc)
            return None
        self._publish(bundle_id, UpdateState.DOWNLOADING, target=target, progress=1.0)
        return self._slots.install(bundle_id, bundle)

    def _switch(self, target: Target, manifest: Optional[Manifest], folder: Optional[Path]) -> None:
        bundle_id = target.bundle_id or ""
        self._step(target, "preparing", UpdateState.PREPARING)
        failpoints.pause("preparing")
        try:
            detector = self._host.prepare(manifest, folder)
        except InferenceError as exc:
            self._fail(target, BundleRefused(Refusal.PREPARE_FAILED, str(exc)))
            return
        if manifest is not None and manifest.model.golden and folder is not None:
            try:
                wrong = mismatch(
                    detector.predict, load_golden(folder / manifest.model.golden), self._config.golden_tolerance
                )
            except InferenceError as exc:
                wrong = str(exc)
            if wrong is not None:
                detector.close()
                self._fail(target, BundleRefused(Refusal.GOLDEN_MISMATCH, wrong))
                return
        if self._abort.is_set():
            detector.close()
            raise _Stop()
        baseline = self._quality.baseline()
        self._save(replace(self._state, step="swap", baseline=baseline.to_dict() if baseline else None))
        failpoints.pause("swap")
        old = self._host.swap(detector, manifest)  # from the next frame on
        self._quality.start_trial()
        self._manifests[target.bundle_id] = manifest
        previous = self._state.active
        self._save(replace(self._state, active=target.bundle_id, previous=previous, step="probation"))
        if target.rollback or manifest is None:  # going back on the hub's word: no probation to undo it
            self._quality.end_trial()
            self._keep(bundle_id, target.rollout_id, old, "back to the model before, as the hub asked")
            return
        logger.info("models: now running %s (was %s); probation", bundle_id or "the own model", previous or "own")
        self._probation(bundle_id, target.rollout_id, baseline, old, previous)

    def _probation(
        self,
        bundle_id: str,
        rollout_id: str,
        baseline: Optional[Summary],
        old: Optional[Detector],
        previous: Optional[str],
    ) -> None:
        """Watch the new model's frames; keep it, or swap back ``old`` (or the ``previous`` bundle loaded again,
        when a restart interrupted the probation and the old model is no longer in memory)."""
        self._publish(bundle_id, UpdateState.PROBATION, rollout_id=rollout_id)
        failpoints.pause("probation")
        bounds = self._config.probation
        end = time.monotonic() + bounds.max_s
        aborted = False
        while time.monotonic() < end:
            trial = self._quality.trial()
            if trial is not None and trial.frames >= bounds.frames:
                break
            if self._abort.wait(0.2):
                aborted = True
                break
        trial = self._quality.trial()
        self._quality.end_trial()
        why = "the hub withdrew it" if aborted else (verdict(baseline, trial, bounds) if trial else None)
        if why is None:
            self._keep(bundle_id, rollout_id, old, f"probation passed: {trial}")
            return
        logger.warning("models: %s rolled back: %s", bundle_id, why)
        restore = old if old is not None else self._host.prepare(self._manifests.get(previous), self._folder(previous))
        self._host.swap(restore, self._manifests.get(previous)).close()
        reason = Refusal.ABORTED if aborted else Refusal.PROBATION_FAILED
        event = {
            "bundle_id": bundle_id,
            "rollout_id": rollout_id,
            "outcome": "rolled_back",
            "reason": reason.value,
            "detail": why,
            "at": time.time(),
        }
        self._state = self._slots.note(self._state, event)
        self._save(replace(self._state, active=previous, previous=None, step="", baseline=None, update={}))
        self._publish(bundle_id, UpdateState.ROLLED_BACK, rollout_id=rollout_id, reason=reason.value, detail=why)
        if aborted:
            raise _Stop()

    def _keep(self, bundle_id: str, rollout_id: str, old: Optional[Detector], detail: str) -> None:
        """The new model stays: the old one is freed, the update is done, bundles no longer needed go."""
        if old is not None:
            old.close()
        event = {"bundle_id": bundle_id, "rollout_id": rollout_id, "outcome": "active", "at": time.time()}
        self._state = self._slots.note(self._state, event)
        self._save(replace(self._state, step="", baseline=None, update={}))
        self._slots.prune(self._state)
        self._publish(bundle_id, UpdateState.ACTIVE, rollout_id=rollout_id, detail=detail)

    def _resume_probation(self) -> None:
        update = self._state.update
        baseline = Summary.from_dict(self._state.baseline) if self._state.baseline else None
        self._quality.start_trial()
        with self._lock:  # its own desired state, arrived meanwhile, does not abort it; another one does
            self._job = (update.get("bundle_id"), update.get("rollout_id", ""))
            target = self._target
            if target is None or (target.bundle_id, target.rollout_id) == self._job:
                self._abort.clear()
        try:
            with contextlib.suppress(_Stop):
                self._probation(
                    update.get("bundle_id", ""), update.get("rollout_id", ""), baseline, None, self._state.previous
                )
        finally:
            self._job = (None, "")

    # -- bookkeeping ---------------------------------------------------------------------------------------------

    def _folder(self, bundle_id: Optional[str]) -> Optional[Path]:
        return self._slots.bundle_dir(bundle_id) if bundle_id else None

    def _outcome(self, bundle_id: Optional[str], rollout_id: str) -> Optional[UpdateStatus]:
        for event in reversed(self._state.history):
            if event.get("bundle_id") == (bundle_id or "") and event.get("rollout_id") == rollout_id:
                if event.get("outcome") in ("failed", "rolled_back"):
                    state = _OUTCOMES[event["outcome"]]
                    return self._status(
                        bundle_id or "",
                        state,
                        rollout_id,
                        reason=event.get("reason", ""),
                        detail=event.get("detail", ""),
                    )
                return None
        return None

    def _step(self, target: Target, step: str, state: UpdateState) -> None:
        update = {"bundle_id": target.bundle_id or "", "rollout_id": target.rollout_id, "started_at": time.time()}
        self._save(replace(self._state, step=step, update=update))
        self._publish(target.bundle_id or "", state, target=target)

    def _fail(self, target: Target, exc: BundleRefused) -> None:
        bundle_id = target.bundle_id or ""
        logger.error("models: bundle %s refused: %s", bundle_id, exc)
        event = {
            "bundle_id": bundle_id,
            "rollout_id": target.rollout_id,
            "outcome": "failed",
            "reason": exc.reason.value,
            "detail": exc.detail,
            "at": time.time(),
        }
        self._state = self._slots.note(self._state, event)
        self._save(replace(self._state, step="", update={}))
        self._slots.prune(self._state)
        self._publish(bundle_id, UpdateState.FAILED, target=target, reason=exc.reason.value, detail=exc.detail)

    def _save(self, state: SlotState) -> None:
        self._state = state
        self._slots.save(state)

    def _status(self, bundle_id: str, state: UpdateState, rollout_id: str, **fields: object) -> UpdateStatus:
        release = int(bundle_id.rsplit("-", 1)[1]) if "-" in bundle_id and bundle_id.rsplit("-", 1)[1].isdigit() else 0
        return UpdateStatus(
            rollout_id=rollout_id, bundle_id=bundle_id, release=release, state=state, at=time.time(), **fields
        )

    def _publish(
        self,
        bundle_id: str,
        state: UpdateState,
        *,
        target: Optional[Target] = None,
        rollout_id: Optional[str] = None,
        progress: float = 0.0,
        reason: str = "",
        detail: str = "",
        recovered: str = "",
    ) -> None:
        if rollout_id is None:
            rollout_id = target.rollout_id if target else self._state.update.get("rollout_id", "")
        status = self._status(
            bundle_id,
            state,
            rollout_id,
            progress=progress,
            reason=reason,
            detail=detail[:500],
            recovered_from=recovered or self._interrupted,
        )
        self._host.on_status(status)
