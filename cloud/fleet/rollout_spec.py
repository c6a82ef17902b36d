"""What a rollout is: its spec (target, waves, soak, timeouts, abort rules), how its devices fall into waves, and
the quality figures its rules read from a device's heartbeat. No I/O; ``rollouts`` runs them."""

from __future__ import annotations

import enum
import hashlib
import math
from typing import Optional

from pydantic import BaseModel, Field, model_validator

from cloud.fleet.store import Device


class RolloutState(str, enum.Enum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    ABORTED = "ABORTED"
    ROLLED_BACK = "ROLLED_BACK"


class TargetSpec(BaseModel):
    devices: list[str] = Field([], description="these device ids")
    group: Optional[str] = None
    tag: Optional[str] = None
    device_class: Optional[str] = None


class Exponential(BaseModel):
    first: int = Field(1, ge=1, description="devices in the first wave")
    factor: float = Field(2.0, gt=1, description="each wave this many times the one before")


class Rules(BaseModel):
    max_failure_share: float = Field(0.2, ge=0, le=1, description="abort past this share of failed devices...")
    min_devices: int = Field(1, ge=1, description="...once at least this many have finished")
    max_golden_failures: int = Field(0, ge=0, description="abort when more devices than this fail the golden check")
    max_escalation_increase: Optional[float] = Field(
        0.5, ge=0, description="abort when updated devices escalate this much more (relative) than the others"
    )
    min_escalation_delta: float = Field(0.05, ge=0, description="...and by at least this share of frames")
    max_confidence_drop: Optional[float] = Field(0.1, ge=0, le=1, description="abort on this drop in mean confidence")
    max_latency_ratio: Optional[float] = Field(2.0, ge=1, description="abort when their p95 inference time is this x")
    min_latency_delta_ms: float = Field(
        2.0, ge=0, description="...and at least this many ms more (0.3 -> 0.7 is noise)"
    )
    min_frames: int = Field(
        100, ge=1, description="quality is judged on devices whose model has answered at least this many frames"
    )


class RolloutSpec(BaseModel):
    bundle_id: str
    target: TargetSpec = TargetSpec()
    waves: list[float] = Field([1.0], description="cumulative shares of the target per wave, e.g. [0.1, 0.5, 1]")
    exponential: Optional[Exponential] = Field(None, description="instead of waves: 1, 2, 4, ... devices")
    soak_s: float = Field(60.0, ge=0, description="after a wave has finished, wait this long before the next")
    device_timeout_s: float = Field(900.0, gt=0, description="a device that has not finished by then has failed")
    rules: Rules = Rules()

    @model_validator(mode="after")
    def _waves(self) -> RolloutSpec:
        if (
            not self.waves
            or any(b <= a for a, b in zip(self.waves, self.waves[1:], strict=False))
            or self.waves[-1] != 1.0
        ):
            raise ValueError("waves are increasing cumulative shares ending at 1.0, e.g. [0.5, 1.0]")
        if any(not 0 < w <= 1 for w in self.waves):
            raise ValueError("each wave is a share in (0, 1]")
        return self


def plan_waves(spec: RolloutSpec, device_ids: list[str], seed: str) -> list[list[str]]:
    """The devices of each wave: shuffled by a hash of the rollout id (stable), then cut by the wave sizes."""
    order = sorted(device_ids, key=lambda d: hashlib.sha256(f"{seed}/{d}".encode()).hexdigest())
    cuts: list[int] = []
    if spec.exponential is not None:
        size, total = float(spec.exponential.first), 0
        while total < len(order):
            total = min(len(order), total + max(1, round(size)))
            cuts.append(total)
            size *= spec.exponential.factor
    else:
        cuts = sorted({max(1, math.ceil(share * len(order))) for share in spec.waves})
    waves, start = [], 0
    for cut in cuts:
        if cut > start:
            waves.append(order[start:cut])
            start = cut
    return waves


def signals(device: Device, min_frames: int = 1) -> Optional[dict[str, float]]:
    """A device's quality figures for the model it runs, from its last heartbeat's since-the-model-started
    counters: the share of frames the judge found uncertain, mean confidence (bin centres), p95 inference time.
    None until the model has answered min_frames frames: a few frames are noise."""
    beat = device.telemetry or {}
    frames = int(beat.get("model_frames", 0))
    histogram = beat.get("model_confidence_histogram") or []
    if frames < min_frames or not sum(histogram):
        return None
    width = 1.0 / len(histogram)
    return {
        "escalation_rate": int(beat.get("model_uncertain", 0)) / frames,
        "confidence": sum((i + 0.5) * width * n for i, n in enumerate(histogram)) / sum(histogram),
        "p95_ms": float(beat.get("model_p95_ms") or 0.0),
    }


def mean(values: list[dict[str, float]], key: str) -> float:
    return sum(v[key] for v in values) / len(values)
