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

import json
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.errors import InvalidTopic, MalformedMessage, UnsupportedSchemaVersion
from protocol.topics import validate_device_id

SCHEMA_VERSION = 1
CONFIDENCE_BINS = 10  # Telemetry.confidence_histogram: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # fields from a newer minor revision are kept

    schema_version: int = SCHEMA_VERSION
    device_id: str
    sent_at: float = Field(description="Unix seconds, the sender's clock")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        try:
            return validate_device_id(value)
        except InvalidTopic as exc:
            raise ValueError(str(exc)) from exc


class ActiveModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    model_id: str = Field(description="the model's name (the bundle's, or the model file's stem)")
    version: str = Field("", description="the bundle's version; empty for the model the device was installed with")
    sha256: str = Field("", description="the model file's sha256")
    backend: str = Field(description="what really runs it, e.g. onnxruntime:CPUExecutionProvider or tensorrt:10.3")


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


class Telemetry(_Message):
    """A device's heartbeat: what happened since the previous one."""

    interval_s: float = Field(gt=0)
    fps: float = Field(ge=0)
    escalations_per_s: float = Field(ge=0)
    fallbacks_per_s: float = Field(ge=0)
    outbox_rows: int = Field(ge=0)
    outbox_oldest_age_s: float = Field(ge=0)
    confidence_histogram: tuple[int, ...] = Field(
        description=f"frames by their prediction's confidence, {CONFIDENCE_BINS} equal bins from 0 to 1"
    )
    cpu_percent: float = Field(ge=0, description="this process, 100 = one core busy")
    memory_mb: float = Field(ge=0, description="this process's resident memory")
    gpu_percent: Optional[float] = Field(None, ge=0, description="where the device reports it (Jetson)")
    temperature_c: Optional[float] = None

    @field_validator("confidence_histogram")
    @classmethod
    def _bins(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) != CONFIDENCE_BINS or any(n < 0 for n in value):
            raise ValueError(f"needs {CONFIDENCE_BINS} counts, none negative")
        return value


class Desired(_Message):
    """What the hub wants a device to run. ``version`` grows with every change; a device applies a version once."""

    version: int = Field(ge=1)
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="overrides of the device's own config, by section (judge, escalation)"
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
