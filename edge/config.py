"""The device's configuration: one YAML file, validated by these models.

Every field is described here; README.md's configuration table is written
from the same descriptions. Unknown keys are errors, so a typo is reported
rather than ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from common.config import StrictModel, describe_errors, read_yaml_mapping
from common.errors import ConfigError
from common.tls import TlsFiles
from protocol.topics import DeviceId


class SourceConfig(StrictModel):
    kind: Literal["video", "camera", "images", "stream", "gstreamer"] = Field(
        description=(
            "video: a video file; camera: a V4L2 camera (camera_index, or device); images: a folder of images, "
            "read in name order; stream: an RTSP or HTTP MJPEG url; gstreamer: a GStreamer pipeline ending in "
            "appsink (a Jetson CSI camera)"
        )
    )
    path: Optional[Path] = Field(None, description="the video file or image folder (video, images)")
    camera_index: int = Field(0, ge=0, description="the camera's index, 0 = /dev/video0 (camera)")
    device: Optional[str] = Field(None, description="the camera's device path, e.g. /dev/video2; wins over the index")
    url: Optional[str] = Field(None, description="rtsp://... or http://... (stream)")
    pipeline: Optional[str] = Field(None, description="the GStreamer pipeline (gstreamer)")
    labels_csv: Optional[Path] = Field(
        None,
        description="optional ground truth: a CSV with columns frame,file,label; lets the runtime report accuracy",
    )
    source_id: str = Field("cam0", min_length=1, description="a name for this source, recorded with each trace")
    max_fps: Optional[float] = Field(
        None, gt=0, description="read at most this many frames a second (a file plays back at this rate); none: no cap"
    )
    loop: bool = Field(False, description="images: start again from the first image after the last (demos, soak tests)")
    max_image_pixels: int = Field(
        7680 * 4320,
        gt=0,
        description="images: a file whose header declares more pixels than this is not decoded (a decompression "
        "bomb); its frame is unjudgeable",
    )
    timeout_ms: int = Field(5000, gt=0, description="open and read timeout of a stream (stream)")
    reconnect_initial_ms: int = Field(500, gt=0, description="first wait before reopening a live source that failed")
    reconnect_max_ms: int = Field(30_000, gt=0, description="cap on that wait (it doubles, with jitter)")
    judge: dict[str, Any] = Field(
        {}, description="sources: judge fields for this camera alone, over the device's judge (e.g. box_threshold)"
    )

    @model_validator(mode="after")
    def _target(self) -> SourceConfig:
        needs = {"video": "path", "images": "path", "stream": "url", "gstreamer": "pipeline"}
        field = needs.get(self.kind)
        if field is not None and getattr(self, field) is None:
            raise ValueError(f"a source of kind {self.kind} needs {field}")
        return self


class SensorConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the sensor's name; its fields are '<name>.<field>'")
    kind: Literal["mqtt", "serial", "stdin"] = Field(
        description="mqtt: messages on a topic of the device's broker; serial: lines from a serial port; stdin: lines "
        "on standard input"
    )
    topic: Optional[str] = Field(None, description="the MQTT topic to read (mqtt)")
    port: Optional[str] = Field(None, description="the serial device, e.g. /dev/ttyUSB0 (serial)")
    baudrate: int = Field(115_200, gt=0, description="the serial port's speed (serial)")
    fields: dict[str, Literal["number", "boolean", "string"]] = Field(
        min_length=1, description="the schema: every reading must carry these fields with these types"
    )


class DetectorConfig(StrictModel):
    type: Literal["onnx", "opencv", "tensorrt"] = Field(
        "onnx",
        description="the inference backend: onnx (ONNX Runtime: CPU, or CUDA/TensorRT providers when present), "
        "opencv (OpenCV DNN), tensorrt (a serialized engine from tools/build_engine; Jetson)",
    )
    kind: Literal["classification", "detection", "text_detection", "ocr", "haar_cascade"] = Field(
        "classification",
        description="what the model does: class scores; boxes of objects (a YOLOv8/YOLO11 ONNX export); boxes "
        "around text (PP-OCRv4 det); text read per character (PP-OCRv4 det + rec); boxes from an OpenCV Haar cascade",
    )
    model_path: Path = Field(
        description="the model file (.onnx, or .engine for tensorrt); for haar_cascade a cascade file or the name "
        "of one OpenCV ships, e.g. haarcascade_russian_plate_number.xml"
    )
    rec_model_path: Optional[Path] = Field(None, description="ocr: the text recogniser (PP-OCRv4 rec)")
    labels: list[str] = Field(
        [],
        description="haar_cascade: the class name of its boxes (default from the file); detection: the class names "
        "when the model's metadata has none",
    )
    conf_threshold: float = Field(
        0.25, ge=0, le=1, description="detection: a candidate box scoring below this is dropped before NMS"
    )
    iou_threshold: float = Field(
        0.45, gt=0, le=1, description="detection: NMS drops a box overlapping a better one of its class by more"
    )
    max_detections: int = Field(100, ge=1, description="detection: the most boxes kept per frame")
    det_min_side: int = Field(
        96, ge=32, description="text_detection, ocr: the frame is scaled up so its shorter side is at least this"
    )
    det_max_side: int = Field(
        960, ge=32, description="text_detection, ocr: and down so its longer side is at most this"
    )
    intra_op_num_threads: int = Field(
        1, ge=1, description="ONNX Runtime threads per inference; 1 is fastest for small models"
    )
    pipelined: bool = Field(
        True,
        description="one camera: the next frame's inference runs (on a thread of its own) while this frame is "
        "judged and recorded, so a fast model is not held up by the bookkeeping; a frame's decision comes one "
        "inference later",
    )
    providers: list[str] = Field(
        [],
        description="onnx: execution providers in order of preference; empty: TensorRT, CUDA, then CPU, of those "
        "this onnxruntime has",
    )


class OodConfig(StrictModel):
    brightness_mean: float = Field(description="mean frame brightness (0-255) of the calibration stream")
    brightness_std: float = Field(gt=0, description="its standard deviation across frames")
    contrast_mean: float = Field(description="mean frame contrast (standard deviation of the pixels)")
    contrast_std: float = Field(gt=0, description="its standard deviation across frames")
    z_tolerance: float = Field(
        3.0, ge=0, description="z-scores up to this leave confidence alone; past it, confidence decays as exp(-excess)"
    )


class SensorGateConfig(StrictModel):
    sensor: str = Field(description="the sensor field, as '<sensor name>.<field>' (see sensors)")
    above: Optional[float] = Field(None, description="escalate every frame while the value is above this")
    below: Optional[float] = Field(None, description="escalate every frame while the value is below this")


PRESETS: dict[str, dict[str, object]] = {
    # Escalate uncertain answers and hold them until the verdict or the deadline.
    "default": {"escalate": "uncertain", "answer": "after_verdict"},
    # Act on the local answer at once; uncertain ones (and a 1% audit of confident ones)
    # still go to the hub, and a differing verdict corrects the answer afterwards.
    "edge_answers_with_escalation": {"escalate": "uncertain", "answer": "immediately", "audit_rate": 0.01},
    # Never escalate; uncertain answers are kept and their reasons recorded.
    "no_cloud": {"escalate": "never", "answer": "immediately"},
    # Escalate every judgeable frame.
    "cloud_only": {"escalate": "always", "answer": "after_verdict"},
}


class JudgeConfig(StrictModel):
    preset: Literal["default", "edge_answers_with_escalation", "no_cloud", "cloud_only"] = Field(
        "default", description="a starting set of the fields below; any field set here overrides it"
    )
    escalate: Literal["uncertain", "never", "always"] = Field(
        "uncertain", description="which frames go to the hub: those the policies find uncertain, none, or all"
    )
    answer: Literal["after_verdict", "immediately"] = Field(
        "after_verdict",
        description="when actions fire for an escalated frame: on the verdict (or fallback), or at once on the local "
        "answer and again if the verdict differs",
    )
    confidence_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="answers with a top score below this are escalated to the hub"
    )
    class_thresholds: dict[str, float] = Field(
        {}, description="per-class confidence thresholds (label: threshold) that override confidence_threshold"
    )
    target_escalation_rate: Optional[float] = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="hold this share of frames under the confidence threshold on the device's own stream: the "
        "threshold starts at confidence_threshold and moves a little after every frame (quantile tracking), within "
        "threshold_bounds; per-class thresholds stay fixed; none: the threshold is fixed",
    )
    threshold_bounds: tuple[float, float] = Field(
        (0.0, 1.0), description="target_escalation_rate: the lowest and highest the threshold may move to"
    )
    adapt_step: float = Field(
        0.002,
        gt=0.0,
        le=0.1,
        description="target_escalation_rate: how far one frame moves the threshold; smaller is slower and steadier",
    )
    min_margin: float = Field(
        0.0, ge=0.0, le=1.0, description="escalate when the top two scores are closer than this; 0 turns it off"
    )
    max_entropy: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="escalate when the normalised entropy of the scores is above this; 1 turns it off",
    )
    unknown_labels: list[str] = Field(
        [],
        description="classes that mean 'unknown' or 'anomaly': a frame whose top class is one, or with a box of one, "
        "is always escalated",
    )
    min_sharpness: float = Field(
        0.0, ge=0.0, description="escalate frames whose variance of the Laplacian is below this (blur); 0 turns it off"
    )
    box_threshold: float = Field(0.5, ge=0.0, le=1.0, description="detectors: a box scoring below this is weak")
    box_floor: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="detectors: boxes scoring below this are background to the box policy (the detector may keep "
        "them, for recall); 0: every box counts",
    )
    box_class_thresholds: dict[str, float] = Field(
        {}, description="detectors: per-class box thresholds (label: threshold) that override box_threshold"
    )
    max_weak_box_share: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="detectors: escalate when more than this share of boxes is weak; 1 turns it off",
    )
    ood: Optional[OodConfig] = Field(
        None, description="out-of-distribution down-weighting, from the calibration stream; none turns it off"
    )
    sensor_gates: list[SensorGateConfig] = Field([], description="escalate while a sensor reads out of range")
    audit_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="share of confident answers escalated anyway, to keep checking the edge model"
    )
    audit_seed: Optional[int] = Field(None, description="seed for the audit's draws (for repeatable runs)")
    max_escalations_per_minute: Optional[int] = Field(
        None, gt=0, description="at most this many escalations in any 60 s; the rest keep their local answer"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if isinstance(data, dict):
            preset = PRESETS.get(str(data.get("preset", "default")), {})
            return {**preset, **data}
        return data

    @model_validator(mode="after")
    def _bounds_hold_the_threshold(self) -> JudgeConfig:
        low, high = self.threshold_bounds
        if not 0.0 <= low <= self.confidence_threshold <= high <= 1.0:
            raise ValueError(
                f"threshold_bounds {list(self.threshold_bounds)} must hold confidence_threshold "
                f"{self.confidence_threshold}, within 0-1"
            )
        return self

    @field_validator("class_thresholds", "box_class_thresholds")
    @classmethod
    def _thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"thresholds must be between 0 and 1: {bad}")
        return value


class OutboxConfig(StrictModel):
    max_in_flight: int = Field(8, ge=1, description="escalations sent to the hub at the same time")
    retry_initial_ms: int = Field(200, gt=0, description="first retry delay after a failed send")
    retry_max_ms: int = Field(10_000, gt=0, description="cap on the retry delay (it doubles, with jitter, up to this)")
    confirm_timeout_ms: int = Field(
        10_000,
        gt=0,
        description="transport mqtt: an escalation the hub has not confirmed (on .../accepted) this long after the "
        "broker took it is sent again; the wait doubles with each send",
    )
    confirm_timeout_max_ms: int = Field(120_000, gt=0, description="cap on that wait")
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode in WAL: NORMAL survives a crash of the process, FULL also a power cut",
    )
    max_rows: int = Field(10_000, gt=0, description="most escalations waiting for a verdict (queued or sent)")
    max_bytes: int = Field(256 * 1024 * 1024, gt=0, description="most payload bytes waiting for a verdict")
    on_full: Literal["reject_new", "drop_oldest", "drop_lowest_priority"] = Field(
        "drop_oldest",
        description="when a bound is reached: keep the queue and answer the new frame locally, drop the oldest "
        "escalation, or drop the lowest-priority one (oldest first among equals); a dropped trace falls back",
    )
    ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="an escalation with no verdict this long after it was queued moves to the failed table "
        "(`tandem edge replay` requeues it)",
    )
    local_trace_batch: int = Field(
        32,
        ge=1,
        description="traces that escalate nothing are written in groups of up to this many (1: each at once); "
        "an escalation is always on disk before the frame loop goes on",
    )
    local_trace_flush_ms: int = Field(
        200, ge=0, description="and no later than this after the group's first trace (a crash loses at most that)"
    )
    trace_retention_s: float = Field(
        7 * 86_400.0, gt=0, description="finished traces older than this are deleted from the device store"
    )
    failed_retention_s: float = Field(
        30 * 86_400.0, gt=0, description="failed escalations older than this are deleted from the failed table"
    )


class GrpcConfig(StrictModel):
    kind: Literal["grpc"] = Field("grpc", description="the escalation transport: grpc or mqtt")
    target: str = Field("127.0.0.1:9000", description="the hub's gRPC address, host:port")
    timeout_ms: int = Field(3000, gt=0, description="deadline of one Escalate call")
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest request or response, both directions")
    application: str = Field("tandem", description="the Ray Serve application that serves escalations")
    wait_for_verdict: bool = Field(
        False,
        description="call EscalateAndWait: the verdict comes back in the gRPC response (timeout_ms must cover the"
        " hub's answer time); if the call ends first, the verdict arrives on MQTT as usual",
    )


class MqttTransportConfig(StrictModel):
    kind: Literal["mqtt"] = Field(description="escalations as QoS 1 messages on tandem/v1/devices/{id}/escalations")
    timeout_ms: int = Field(3000, gt=0, description="how long one send waits for the broker's PUBACK")
    max_message_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="largest escalation sent; keep it under the broker's message_size_limit"
    )


class MqttConfig(StrictModel):
    host: str = Field("127.0.0.1", description="the MQTT broker's host")
    port: int = Field(1883, gt=0, lt=65536, description="the MQTT broker's port")
    keepalive_s: int = Field(30, gt=0, description="MQTT keep-alive interval")
    username: Optional[str] = Field(None, description="MQTT user name; defaults to the device id")
    password: Optional[str] = Field(None, description="MQTT password, if the broker asks for one")
    connect_timeout_ms: int = Field(
        5000, gt=0, description="how long start-up waits for the broker before going on without it"
    )


class ActionsConfig(StrictModel):
    enabled: bool = Field(False, description="publish alerts (and call the webhook) for settled answers")
    alert_labels: list[str] = Field([], description="the classes that trigger an action; empty: every class")
    alert_min_confidence: float = Field(0.0, ge=0, le=1, description="skip answers less sure than this")
    webhook_url: Optional[str] = Field(None, description="POST each alert's JSON here too; none: no webhook")
    webhook_timeout_ms: int = Field(2000, gt=0, description="timeout of one webhook call (3 attempts)")


class ServiceConfig(StrictModel):
    http_host: str = Field("127.0.0.1", description="address of /healthz and /metrics")
    http_port: Optional[int] = Field(
        9108, ge=0, lt=65536, description="port of /healthz and /metrics; 0 picks a free one; none turns them off"
    )
    stall_after_s: float = Field(
        30.0, gt=0, description="/healthz answers 503 when the frame loop has not turned for this long"
    )


class EscalationConfig(StrictModel):
    deadline_ms: int = Field(
        5000, gt=0, description="how long a trace waits for the hub's verdict before the local answer stands"
    )
    model_hint: str = Field("digits", description="tells the hub which kind of model should look at the input")
    image_format: Literal["png", "jpeg"] = Field("png", description="how a frame is encoded for the hub")
    jpeg_quality: int = Field(90, ge=1, le=100, description="jpeg: the encoder's quality, 1-100")
    payload: Literal["frame", "boxes"] = Field(
        "frame",
        description="what the hub gets: the whole frame, or (detectors) the crop around the boxes the judge "
        "doubts, with crop_margin of context; the hub answers for the whole frame either way",
    )
    crop_margin: float = Field(
        0.5, ge=0.0, le=4.0, description="boxes: context around the doubted boxes, as a share of their extent"
    )
    max_side: Optional[int] = Field(
        None, ge=16, description="scale what is sent down until its longer side is at most this; none: as taken"
    )


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class FleetConfig(StrictModel):
    group: str = Field(
        "default", pattern=NAME_PATTERN, description="the device's group: the hub sets settings and rolls out per group"
    )
    tags: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        [], description="labels the hub can target, e.g. site-a, night"
    )
    device_class: Optional[str] = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        description="hardware/software class, e.g. jetson-orin-nano/jp6.1/trt10.3; none: the machine and the "
        "backend that runs the model (x86_64/cpu, x86_64/cuda, aarch64/trt10.3)",
    )
    telemetry_interval_s: float = Field(5.0, gt=0, description="how often the heartbeat goes to .../telemetry")
    state_dir: Optional[Path] = Field(
        None, description="where the hub's settings are kept across restarts; none: <state_path>.fleet/"
    )


class ProbationConfig(StrictModel):
    frames: int = Field(100, ge=1, description="frames a new model answers on probation before it is kept")
    max_s: float = Field(
        300.0, gt=0, description="probation ends after this long even with fewer frames (it is judged on what it saw)"
    )
    max_escalation_ratio: float = Field(
        1.5, ge=1, description="roll back if the new model escalates more than this many times as often as the old"
    )
    min_escalation_change: float = Field(
        0.1, ge=0, description="...and by at least this much in absolute share of frames (0.02 -> 0.04 is noise)"
    )
    max_latency_ratio: float = Field(
        2.0, ge=1, description="roll back if its p95 inference time is this many times the old"
    )
    min_latency_change_ms: float = Field(
        2.0, ge=0, description="...and at least this many ms longer (0.3 ms -> 0.7 ms is noise, not a slower model)"
    )
    max_error_rate: float = Field(0.02, ge=0, le=1, description="roll back if more than this share of frames fail")
    max_confidence_drop: float = Field(
        0.15, ge=0, le=1, description="roll back if its mean confidence is this much below the old model's"
    )


class ModelsConfig(StrictModel):
    """Model bundles pushed by the hub: who to trust, and the bounds on each step."""

    root_keys: list[str] = Field(
        [], description="base64 Ed25519 public keys of the fleet's root; empty: every bundle is refused (unsigned)"
    )
    max_release_jump: int = Field(
        1000, ge=1, description="refuse a release counter more than this far above the active one (fast-forward)"
    )
    download_min_bytes_per_s: int = Field(
        2048, ge=1, description="a download slower than this over download_window_s is abandoned (slow retrieval)"
    )
    download_window_s: float = Field(10.0, gt=0, description="the window over which that rate is measured")
    download_deadline_s: float = Field(900.0, gt=0, description="a bundle not downloaded in this time is refused")
    download_attempts: int = Field(5, ge=1, description="tries per file; each resumes where the last one stopped")
    golden_tolerance: float = Field(
        1e-3, ge=0, description="largest difference allowed between a golden sample's expected and actual scores"
    )
    probation: ProbationConfig = ProbationConfig()


def _transport_kind(value: object) -> str:
    """The transport's kind; a section without one is gRPC, the default."""
    kind = value.get("kind", "grpc") if isinstance(value, dict) else getattr(value, "kind", "grpc")
    return str(kind)


class EdgeConfig(StrictModel):
    device_id: DeviceId = Field(description="this device's id; names its MQTT topics")
    state_path: Path = Field(Path("tandem-edge.db"), description="the SQLite file holding traces and the outbox")
    source: Optional[SourceConfig] = Field(None, description="the camera or file to read (or sources)")
    sources: list[SourceConfig] = Field(
        [],
        description="several cameras in one process instead of source: each reads on its own thread, they share "
        "the detector (batched when the model takes a batch), and each has its own source_id and judge",
    )
    sensors: list[SensorConfig] = Field([], description="sensor streams the judge can read")
    detector: DetectorConfig
    judge: JudgeConfig = JudgeConfig()
    outbox: OutboxConfig = OutboxConfig()
    transport: Annotated[
        Union[Annotated[GrpcConfig, Tag("grpc")], Annotated[MqttTransportConfig, Tag("mqtt")]],
        Discriminator(_transport_kind),
    ] = Field(GrpcConfig(), description="how escalations reach the hub: kind grpc (the default) or mqtt")
    mqtt: MqttConfig = MqttConfig()
    escalation: EscalationConfig = EscalationConfig()
    actions: ActionsConfig = ActionsConfig()
    service: ServiceConfig = ServiceConfig()
    fleet: FleetConfig = FleetConfig()
    models: ModelsConfig = ModelsConfig()
    tls: Optional[TlsFiles] = Field(
        None,
        description="this device's identity from tandem edge enroll (ca_path, cert_path, key_path): MQTT and gRPC "
        "go over TLS with it, and its certificate's CN must be device_id. None: plain text (the demo, tests)",
    )

    @model_validator(mode="after")
    def _one_way_to_name_cameras(self) -> EdgeConfig:
        if (self.source is None) == (not self.sources):
            raise ValueError("give source (one camera) or sources (several), not both and not neither")
        ids = [c.source_id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"each of sources needs its own source_id: {ids}")
        for camera in self.cameras:
            camera_judge(camera, self.judge)  # a bad per-camera judge is a config error, not a runtime one
        return self

    @property
    def cameras(self) -> list[SourceConfig]:
        """Every source this device reads: ``sources``, or the one ``source``."""
        return list(self.sources) if self.sources else [self.source] if self.source is not None else []

    @model_validator(mode="after")
    def _sensors_fit_the_link(self) -> EdgeConfig:
        mqtt_sensors = [s.name for s in self.sensors if s.kind == "mqtt"]
        if self.tls is not None and mqtt_sensors:
            raise ValueError(
                f"sensors {mqtt_sensors} read the device's broker in plain MQTT, which a secured device (tls) does "
                "not use, and the fleet broker gives each certificate one session: read them over serial or stdin"
            )
        return self


def camera_judge(camera: SourceConfig, judge: JudgeConfig) -> JudgeConfig:
    """The judge of one camera: the device's, with the camera's own fields over it."""
    if not camera.judge:
        return judge
    return JudgeConfig.model_validate({**judge.model_dump(exclude_unset=True), **camera.judge})


def load_config(path: Path) -> EdgeConfig:
    """Read and validate a YAML config; relative paths in it are taken from the file's folder."""
    raw = read_yaml_mapping(path)
    try:
        config = EdgeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_errors(exc)}") from exc
    return resolve_paths(config, path.parent)


def fleet_state_dir(config: EdgeConfig) -> Path:
    return config.fleet.state_dir or config.state_path.with_name(config.state_path.name + ".fleet")


def resolve_paths(config: EdgeConfig, base: Path) -> EdgeConfig:
    def fix(p: Optional[Path]) -> Optional[Path]:
        return p if p is None or p.is_absolute() else base / p

    return config.model_copy(
        update={
            "state_path": fix(config.state_path),
            "source": config.source
            and config.source.model_copy(
                update={"path": fix(config.source.path), "labels_csv": fix(config.source.labels_csv)}
            ),
            "sources": [
                c.model_copy(update={"path": fix(c.path), "labels_csv": fix(c.labels_csv)}) for c in config.sources
            ],
            "detector": config.detector.model_copy(update={"model_path": fix(config.detector.model_path)}),
            "fleet": config.fleet.model_copy(update={"state_dir": fix(config.fleet.state_dir)}),
            "tls": (
                TlsFiles(
                    ca_path=base / config.tls.ca_path,
                    cert_path=base / config.tls.cert_path,
                    key_path=base / config.tls.key_path,
                )
                if config.tls is not None
                else None
            ),
        }
    )
