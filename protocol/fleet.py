"""The control plane's messages: what a device says about itself, and what the hub wants it to be.

    device -> hub   tandem/v1/devices/{id}/reported    Reported (retained): who it is, what it runs, which desired
                                                       version it applied or why it refused it
    device -> hub   tandem/v1/devices/{id}/telemetry   Telemetry, every few seconds: rates, outbox, confidences, load
    hub -> device   tandem/v1/devices/{id}/desired     Desired (retained): settings, versioned by a counter

They are JSON, not protobuf: they are small, rare next to escalations, and an operator reading a retained topic
with ``mosquitto_sub`` should see what the device was told. Like the protobuf messages, each carries
``schema_version`` (an unknown one is refused with UnsupportedSchemaVersion) and keeps fields it does not know.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.bundle import BundleEnvelope
from protocol.errors import MalformedMessage, UnsupportedSchemaVersion
from protocol.topics import DeviceId

SCHEMA_VERSION = 1
CONFIDENCE_BINS = 10  # Telemetry.confidence_histogram: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]
MAX_CAMERAS = 64  # Telemetry.camera_fps: most sources counted per heartbeat


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # fields from a newer minor revision are kept

    schema_version: int = SCHEMA_VERSION
    device_id: DeviceId
    sent_at: float = Field(description="Unix seconds, the sender's clock")


class ActiveModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    model_id: str = Field(description="the model's name (the bundle's, or the model file's stem)")
    version: str = Field("", description="the bundle's version; empty for the model the device was installed with")
    sha256: str = Field("", description="the model file's sha256")
    backend: str = Field(description="what really runs it, e.g. onnxruntime:CPUExecutionProvider or tensorrt:10.3")
    bundle_id: str = Field("", description="the bundle it came in; empty for the model the device was installed with")
    release: int = Field(0, ge=0, description="that bundle's release counter")
    fallback: str = Field(
        "", description="why the backend running is not the one configured first (empty: it is, or none was named)"
    )


class UpdateState(str, enum.Enum):
    """Where a device is with a bundle the hub sent it."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    PREPARING = "preparing"
    PROBATION = "probation"
    ACTIVE = "active"  # done: the bundle's model runs
    ROLLED_BACK = "rolled_back"  # it ran, and the device went back to the one before
    FAILED = "failed"  # refused or could not be installed; the model before it runs, untouched


FINAL_STATES = (UpdateState.ACTIVE, UpdateState.ROLLED_BACK, UpdateState.FAILED)


class UpdateStatus(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    rollout_id: str = ""
    bundle_id: str
    release: int = Field(ge=0)
    state: UpdateState
    progress: float = Field(0.0, ge=0, le=1, description="downloading: the share of the bundle's bytes in")
    reason: str = Field("", description="failed or rolled back: the protocol.bundle.Refusal code")
    detail: str = ""
    recovered_from: str = Field("", description="the step a restart (a crash, kill -9) interrupted, if one did")
    at: float = Field(0.0, description="when the device entered this state (Unix seconds)")


class Reported(_Message):
    """A device's own account of itself, published (retained) on connect and after every change."""

    group: str = ""
    tags: tuple[str, ...] = ()
    device_class: str = Field(description="hardware/software, e.g. jetson-orin-nano/jp6.1/trt10.3 or x86_64/cpu")
    runtime_version: str
    model: ActiveModel
    applied_version: int = Field(0, ge=0, description="the last desired version the device applied (0: none yet)")
    refused_version: int = Field(0, ge=0, description="the last desired version it refused (0: none)")
    refused_reason: str = ""
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the hub's settings in effect, by section (judge, escalation)"
    )
    update: Optional[UpdateStatus] = Field(None, description="the last bundle the hub sent, and where it stands")


class Telemetry(_Message):
    """A device's heartbeat: what happened since the previous one."""

    interval_s: float = Field(gt=0)
    fps: float = Field(ge=0)
    camera_fps: dict[str, float] = Field(
        default_factory=dict, description=f"frames/s by camera (source id), at most {MAX_CAMERAS} cameras"
    )
    escalations_per_s: float = Field(ge=0)
    fallbacks_per_s: float = Field(ge=0)
    outbox_rows: int = Field(ge=0)
    outbox_oldest_age_s: float = Field(ge=0)
    confidence_histogram: tuple[int, ...] = Field(
        description=f"frames by their prediction's confidence, {CONFIDENCE_BINS} equal bins from 0 to 1"
    )
    inference_p95_ms: float = Field(0.0, ge=0, description="95th percentile of the model's inference time")
    model_frames: int = Field(0, ge=0, description="frames the active model has answered since it started")
    model_uncertain: int = Field(0, ge=0, description="...of which the judge found uncertain")
    model_confidence_histogram: tuple[int, ...] = Field(
        (0,) * CONFIDENCE_BINS, description="...by confidence (the bins of confidence_histogram)"
    )
    model_p95_ms: float = Field(0.0, ge=0, description="...and its p95 inference time over its last frames")
    judge_threshold: Optional[float] = Field(
        None, ge=0, le=1, description="the judge's confidence_threshold in effect (the hub's setting or the device's)"
    )
    cpu_percent: float = Field(ge=0, description="this process, 100 = one core busy")
    memory_mb: float = Field(ge=0, description="this process's resident memory")
    gpu_percent: Optional[float] = Field(None, ge=0, description="where the device reports it (Jetson)")
    temperature_c: Optional[float] = None

    @field_validator("confidence_histogram", "model_confidence_histogram")
    @classmethod
    def _bins(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) != CONFIDENCE_BINS or any(n < 0 for n in value):
            raise ValueError(f"needs {CONFIDENCE_BINS} counts, none negative")
        return value

    @field_validator("camera_fps")
    @classmethod
    def _cameras(cls, value: dict[str, float]) -> dict[str, float]:
        if len(value) > MAX_CAMERAS or any(not 0 <= fps < float("inf") for fps in value.values()):
            raise ValueError(f"at most {MAX_CAMERAS} cameras, each at a finite rate of 0 or more")
        return value


class Desired(_Message):
    """What the hub wants a device to run. ``version`` grows with every change; a device applies a version once."""

    version: int = Field(ge=1)
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="overrides of the device's own config, by section (judge, escalation)"
    )
    bundle: Optional[BundleEnvelope] = Field(None, description="the model bundle it should run; none: keep its own")
    rollout_id: str = Field("", description="the rollout that sent the bundle, echoed in the device's reports")
    rollback: bool = Field(False, description="the bundle may have a lower release than the active one")
    own_model: bool = Field(
        False, description="go back to the model in the device's own config (a rollout aborted before any bundle)"
    )


M = TypeVar("M", bound=_Message)


def encode(message: _Message) -> bytes:
    return message.model_dump_json().encode("utf-8")


def decode(payload: bytes, message_type: type[M]) -> M:
    """Parse one control-plane message; MalformedMessage or UnsupportedSchemaVersion if it is not one."""
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"{message_type.__name__}: not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise MalformedMessage(f"{message_type.__name__}: not a JSON object")
    version = raw.get("schema_version")
    if type(version) is not int:
        raise MalformedMessage(f"{message_type.__name__}: schema_version missing or not an integer")
    if version != SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(version, SCHEMA_VERSION)
    try:
        return message_type.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MalformedMessage(f"{message_type.__name__}: {fields}") from exc
