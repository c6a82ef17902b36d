"""The device's configuration: one YAML file, validated by these models.

Every field is described here; README.md's configuration table is written
from the same descriptions. Unknown keys are errors, so a typo is reported
rather than ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.errors import ConfigError
from protocol.errors import InvalidTopic
from protocol.topics import validate_device_id


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    kind: Literal["video", "camera", "images"] = Field(
        description=(
            "video: a video file; camera: a camera by index (0 = /dev/video0); "
            "images: a folder of images, read in name order"
        )
    )
    path: Optional[Path] = Field(None, description="the video file or image folder (video, images)")
    camera_index: int = Field(0, ge=0, description="the camera's index (camera)")
    labels_csv: Optional[Path] = Field(
        None,
        description="optional ground truth: a CSV with columns frame,file,label; lets the runtime report accuracy",
    )
    source_id: str = Field("cam0", min_length=1, description="a name for this source, recorded with each trace")
    max_fps: Optional[float] = Field(
        None, gt=0, description="read at most this many frames a second (a file plays back at this rate); none: no cap"
    )


class DetectorConfig(_Strict):
    type: Literal["onnx"] = Field("onnx", description="the inference backend")
    model_path: Path = Field(description="the ONNX model file")
    intra_op_num_threads: int = Field(
        1, ge=1, description="ONNX Runtime threads per inference; 1 is fastest for small models"
    )


class JudgeConfig(_Strict):
    confidence_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="answers with a top score below this are escalated to the hub"
    )


class OutboxConfig(_Strict):
    max_in_flight: int = Field(8, ge=1, description="escalations sent to the hub at the same time")
    retry_initial_ms: int = Field(200, gt=0, description="first retry delay after a failed send")
    retry_max_ms: int = Field(10_000, gt=0, description="cap on the retry delay (it doubles, with jitter, up to this)")
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode in WAL: NORMAL survives a crash of the process, FULL also a power cut",
    )


class GrpcConfig(_Strict):
    kind: Literal["grpc"] = Field("grpc", description="the escalation transport; gRPC is the one so far")
    target: str = Field("127.0.0.1:9000", description="the hub's gRPC address, host:port")
    timeout_ms: int = Field(3000, gt=0, description="deadline of one Escalate call")
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest request or response, both directions")
    application: str = Field("tandem", description="the Ray Serve application that serves escalations")


class MqttConfig(_Strict):
    host: str = Field("127.0.0.1", description="the MQTT broker's host")
    port: int = Field(1883, gt=0, lt=65536, description="the MQTT broker's port")
    keepalive_s: int = Field(30, gt=0, description="MQTT keep-alive interval")
    username: Optional[str] = Field(None, description="MQTT user name; defaults to the device id")
    password: Optional[str] = Field(None, description="MQTT password, if the broker asks for one")
    connect_timeout_ms: int = Field(
        5000, gt=0, description="how long start-up waits for the broker before going on without it"
    )


class EscalationConfig(_Strict):
    deadline_ms: int = Field(
        5000, gt=0, description="how long a trace waits for the hub's verdict before the local answer stands"
    )
    model_hint: str = Field("digits", description="tells the hub which kind of model should look at the input")
    image_format: Literal["png", "jpeg"] = Field("png", description="how a frame is encoded for the hub")


class EdgeConfig(_Strict):
    device_id: str = Field(description="this device's id; names its MQTT topics")
    state_path: Path = Field(Path("tandem-edge.db"), description="the SQLite file holding traces and the outbox")
    source: SourceConfig
    detector: DetectorConfig
    judge: JudgeConfig = JudgeConfig()
    outbox: OutboxConfig = OutboxConfig()
    transport: GrpcConfig = Field(GrpcConfig(), description="how escalations reach the hub")
    mqtt: MqttConfig = MqttConfig()
    escalation: EscalationConfig = EscalationConfig()

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        try:
            return validate_device_id(value)
        except InvalidTopic as exc:
            raise ValueError(str(exc)) from exc


def load_config(path: Path) -> EdgeConfig:
    """Read and validate a YAML config; relative paths in it are taken from the file's folder."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = EdgeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_errors(exc)}") from exc
    return resolve_paths(config, path.parent)


def describe_errors(exc: ValidationError) -> str:
    """One line per bad field: ``detector.model_path: Field required``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def resolve_paths(config: EdgeConfig, base: Path) -> EdgeConfig:
    def fix(p: Optional[Path]) -> Optional[Path]:
        return p if p is None or p.is_absolute() else base / p

    return config.model_copy(
        update={
            "state_path": fix(config.state_path),
            "source": config.source.model_copy(
                update={"path": fix(config.source.path), "labels_csv": fix(config.source.labels_csv)}
            ),
            "detector": config.detector.model_copy(update={"model_path": fix(config.detector.model_path)}),
        }
    )
