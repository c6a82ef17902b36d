"""``tandem demo``: a hub, a broker and one device on the held-out digits stream, then a summary.

Nothing outside this process is needed: Ray starts locally, the broker is
Mosquitto when installed (else embedded amqtt), and every file lives in a
temporary folder. With ``--json`` the last line of stdout is the summary as
one JSON object. Exit status 1 if an escalated frame ended with neither a
verdict nor a fallback.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from cloud.api.access import token_sha256
from cloud.app import start_hub, stop_hub
from cloud.client import HubHttpError, request
from cloud.config import FleetConfig, HubConfig, OperatorConfig, Role, SecurityConfig
from cloud.models import load_model
from cloud.orchestrator.config import OrchestratorConfig
from edge.app import EdgeRuntime
from edge.config import (
    DetectorConfig,
    EdgeConfig,
    EscalationConfig,
    GrpcConfig,
    JudgeConfig,
    MqttConfig,
    ServiceConfig,
    SourceConfig,
)
from edge.detectors import create_detector
from edge.enroll import enroll
from edge.judge import calibrate
from edge.summary import format_table, summarize
from protocol.messages import EncodedImage, EscalationRequest, new_trace_id
from tandem.broker import EmbeddedBroker, MosquittoBroker, find_mosquitto, free_port, secure_broker_files

logger = logging.getLogger(__name__)

DEVICE_ID = "demo-cam-1"
DEFAULT_FPS = 30.0  # when the video does not say its rate


def _sent(runtime: EdgeRuntime) -> dict[str, object]:
    """Frames per camera, and the bytes the escalations carried (from the device's own metrics)."""
    frames = {c: runtime.metrics.value("frames", camera=c) for c in (s.source_id for s in runtime.config.cameras)}
    sent = runtime.metrics.registry
    count = sum(s.value for m in sent.collect() for s in m.samples if s.name == "tandem_edge_escalation_bytes_count")
    total = sum(s.value for m in sent.collect() for s in m.samples if s.name == "tandem_edge_escalation_bytes_sum")
    return {"frames_by_camera": frames, "escalation_bytes_mean": round(total / count) if count else None}


def _broker(choice: str, port: int) -> Union[MosquittoBroker, EmbeddedBroker]:
    if choice == "mosquitto" or (choice == "auto" and find_mosquitto()):
        return MosquittoBroker(port)
    return EmbeddedBroker(port)


def _pace(args: argparse.Namespace, video: Path) -> Optional[float]:
    """Frames per second to play: --fps, else the video's own rate (a camera's pace); None with --fast.

    At camera pace the round trips are the system's; as fast as possible, a burst queues behind the
    hub and the round trips read that queue."""
    if args.fast:
        return None
    if args.fps is not None:
        return float(args.fps)
    capture = cv2.VideoCapture(str(video))
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    return fps if fps > 0 else DEFAULT_FPS


def _calibrated_threshold(weak: DetectorConfig, models: Path, args: argparse.Namespace) -> float:
    """The threshold ``tandem edge calibrate`` would pick on the calibration stream."""
    detector = create_detector(weak)
    detector.start()
    try:
        calibration = SourceConfig(
            kind="images", path=models / "calibration" / "images", labels_csv=models / "calibration" / "labels.csv"
        )
        samples, _ = calibrate.collect(detector, calibration, JudgeConfig())
    finally:
        detector.close()
    chosen = calibrate.choose(calibrate.sweep(samples), target_escalation=args.target_escalation)
    logger.info(
        "demo: calibrated on %d frames: confidence_threshold %.4f escalates %.1f%% of them",
        len(samples),
        chosen.threshold,
        chosen.escalation_rate * 100,
    )
    return chosen.threshold


def _orchestrator(args: argparse.Namespace) -> OrchestratorConfig:
    """The rules keep the strong model (``strong``: the hub's one model) within --strong-capacity, moving the
    device's threshold at most 0.05 per step, never below 0.5, and back up when the load goes; the embedded
    language model is loaded and asked only about what the rules cannot fix.

    The detection workload's judge is its box threshold, and the rules steer the confidence threshold, which a
    detector's judge leaves at 0: there the orchestrator only observes (it proposes; nothing is applied)."""
    mode = "observe" if args.workload == "detection" and args.orchestrator in ("auto", "approve") else args.orchestrator
    return OrchestratorConfig.model_validate(
        {
            "mode": mode,
            "every_s": 2.0,
            "cooldown_s": 10.0,  # the rates are measured over 10 s: let a change show before the next
            "watch": [{"model": "strong", "capacity_per_s": args.strong_capacity}],
            # One pool replica: a second one starting on a small machine costs the stream more than it gives.
            "bounds": {"threshold_min": 0.5, "max_fleet_share": 1.0, "replicas_max": 1},
        }
    )


class DecisionPrinter:
    """Prints the orchestrator's decisions as they happen (the hub runs them in a Ray replica; this reads its
    admin API once a second)."""

    def __init__(self, url: str, every_s: float = 1.0, token: Optional[str] = None, ca: Optional[str] = None) -> None:
        self._url = url
        self._token = token
        self._ca = ca
        self._every_s = every_s
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-decisions", daemon=True)

    def __enter__(self) -> DecisionPrinter:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.print_new()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.print_new()

    def print_new(self) -> None:
        try:
            rows = request(f"{self._url}/v1/admin/proposals?limit=50", "GET", token=self._token, ca=self._ca)
        except HubHttpError as exc:  # the orchestrator is off (409), or the hub is going away
            logger.debug("demo: no decisions to show: %s", exc)
            return
        for row in reversed(rows):
            key = f"{row['proposal_id']}:{row['state']}"
            if key in self._seen:
                continue
            self._seen.add(key)
            tool = row["action"].get("tool", "malformed answer")
            action = {k: v for k, v in row["action"].items() if k != "tool"}
            why = row["detail"] or row["reason"]
            print(f"orchestrator: {row['state']:<8} {tool} {action} by {row['source']}: {why}", flush=True)


class _Secure:
    """``--secure``: a fleet CA for this run, Mosquitto's TLS listeners, an admin token for the demo itself,
    and the device enrolled through the hub's API like any device (its key made here, a CSR sent up)."""

    def __init__(self, work: Path) -> None:
        work.chmod(0o755)  # the broker's user reads the CA, its key and the ACL below it
        self.broker_files = secure_broker_files(work / "secure")
        self.token = "demo_" + secrets.token_urlsafe(24)
        self.operators = {"demo": OperatorConfig(token_sha256=token_sha256(self.token), role=Role.ADMIN)}
        self.ca = str(self.broker_files.pki_dir / "ca.pem")  # given to the device out of band, with its token
        self._work = work

    def hub_security(self, broker_pid: Optional[int]) -> SecurityConfig:
        return SecurityConfig(
            pki_path=self.broker_files.pki_dir,
            grpc_port=free_port(),
            grpc_host="127.0.0.1",
            broker_acl_path=self.broker_files.acl_dir / "devices.acl",
            broker_reload_command=["kill", "-HUP", str(broker_pid)],
        )

    def enrol(self, edge: EdgeConfig, url: str, grpc_port: int) -> EdgeConfig:
        """A one-time token from the admin API, then ``tandem edge enroll``'s own code: the device's config
        gets its certificate and the hub's device port."""
        body = json.dumps({"device_id": edge.device_id}).encode()
        made = request(f"{url}/v1/admin/enrolments", "POST", body, token=self.token, ca=self.ca)
        enrolled = enroll(url, made["token"], self._work / "identity", ca_path=Path(self.ca))
        logger.info("demo: %s enrolled; its key never left %s", enrolled.device_id, enrolled.files.key_path.parent)
        self._files, self._target = enrolled.files, f"127.0.0.1:{grpc_port}"
        return edge.model_copy(update={"tls": self._files, "transport": GrpcConfig(target=self._target)})

    def described(self, mqtt_port: int) -> dict[str, str]:
        """How the enrolled device reached the hub (what its config used; a secured hub offers nothing else)."""
        return {
            "identity": f"CN={self._files.identity()}",
            "enrolment": "a one-time token and a CSR over HTTPS; the key never left the device",
            "escalations": f"gRPC over TLS with a client certificate to {self._target}",
            "verdicts": f"MQTT over TLS with a client certificate on port {mqtt_port}, per-device ACL",
        }


@dataclass(frozen=True)
class Workload:
    """What the demo plays: the hub's model and the device's config (every field but its links)."""

    hub_model: Path
    edge: EdgeConfig
    about: dict[str, object]  # what the summary adds about this workload


def digits_workload(args: argparse.Namespace, work: Path) -> Union[Workload, str]:
    """One camera on the held-out digits video, the weak classifier on the device, the strong one on the hub."""
    models = args.models
    needed = [
        models / "models" / "digits-weak.onnx",
        models / "models" / "digits-strong.onnx",
        models / "stream" / "digits.avi",
        models / "stream" / "labels.csv",
        models / "calibration" / "labels.csv",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        return f"missing {', '.join(missing)}; build them with: python -m tools.demo_models {models}"
    weak = DetectorConfig(model_path=models / "models" / "digits-weak.onnx")
    threshold = args.threshold if args.threshold is not None else _calibrated_threshold(weak, models, args)
    edge = EdgeConfig(
        device_id=DEVICE_ID,
        state_path=work / "edge.db",
        source=SourceConfig(
            kind="video",
            path=models / "stream" / "digits.avi",
            labels_csv=models / "stream" / "labels.csv",
            max_fps=_pace(args, models / "stream" / "digits.avi"),
        ),
        detector=weak,
        judge=JudgeConfig(confidence_threshold=threshold),
        escalation=EscalationConfig(deadline_ms=args.deadline_ms),
        service=ServiceConfig(http_port=0),
    )
    return Workload(models / "models" / "digits-strong.onnx", edge, {})


DETECTION_CAMERAS = ("cam-a", "cam-b")
DETECTION_FPS = 15.0  # per camera


def detection_workload(args: argparse.Namespace, work: Path) -> Union[Workload, str]:
    """Two cameras in one device process, sharing the light detector (the held-out scenes dealt between them);
    the strong detector on the hub; the judge's box floor and threshold calibrated for --target-escalation; each
    escalation the crop around the doubted boxes, as JPEG."""
    models = args.detect_models
    light, strong = models / "models" / "shapes-light.onnx", models / "models" / "shapes-strong.onnx"
    missing = [str(p) for p in (light, strong, models / "stream", models / "calibration") if not p.exists()]
    if missing:
        return f"missing {', '.join(missing)}; build them with: python -m tools.detection_models {models}"
    detector = DetectorConfig(kind="detection", model_path=light, conf_threshold=0.1)
    # Of the boxes above the floor, more than half weak escalates the frame (the best class's confidence plays no
    # part); floor and threshold are calibrated unless --threshold gives the threshold (then the floor is 0.25).
    judge = JudgeConfig(confidence_threshold=0.0, box_floor=0.25, max_weak_box_share=0.5)
    rate: Optional[float] = None
    if args.threshold is not None:
        box_threshold = args.threshold
    else:
        floor, box_threshold, rate = _calibrated_box_judge(detector, strong, judge, models / "calibration", args)
        judge = judge.model_copy(update={"box_floor": floor})
    frames = sorted((models / "stream").glob("*.png"))
    fps = None if args.fast else args.fps or DETECTION_FPS
    cameras = []
    for i, name in enumerate(DETECTION_CAMERAS):
        folder = work / name
        folder.mkdir()
        for frame in frames[i :: len(DETECTION_CAMERAS)]:
            (folder / frame.name).symlink_to(frame.resolve())
        cameras.append(SourceConfig(kind="images", path=folder, source_id=name, max_fps=fps))
    edge = EdgeConfig(
        device_id=DEVICE_ID,
        state_path=work / "edge.db",
        sources=cameras,
        detector=detector,
        judge=judge.model_copy(update={"box_threshold": box_threshold}),
        escalation=EscalationConfig(
            deadline_ms=args.deadline_ms, payload="boxes", image_format="jpeg", jpeg_quality=90, model_hint="shapes"
        ),
        service=ServiceConfig(http_port=0),
    )
    about = {
        "workload": "detection",
        "cameras": list(DETECTION_CAMERAS),
        "box_floor": judge.box_floor,
        "box_threshold": box_threshold,
        "calibrated_escalation_rate": None if rate is None else round(rate, 4),
    }
    return Workload(strong, edge, about)


def _calibrated_box_judge(
    detector_config: DetectorConfig, strong: Path, judge: JudgeConfig, folder: Path, args: argparse.Namespace
) -> tuple[float, float, float]:
    """The judge's box floor and threshold for --target-escalation, chosen on the labelled calibration scenes
    with the hub's strong model answering what is escalated (``calibrate.choose_box_judge``, as tools/bench edge
    does)."""
    labels = json.loads((folder / "labels.json").read_text())
    names = sorted(labels)
    images = [_scene(folder / name) for name in names]
    detector = create_detector(detector_config)
    detector.start()
    try:
        local = [detector.predict(image) for image in images]
    finally:
        detector.close()
    classes = list(local[0].labels)  # a detector's answer lists every class it knows
    requests = [
        EscalationRequest(new_trace_id(), "calibration", p, _png(i), 5000) for p, i in zip(local, images, strict=True)
    ]
    answers = []
    for answer in load_model(strong).predict_requests(requests):
        if isinstance(answer, Exception):
            raise answer
        answers.append(answer)
    truths = [
        np.array([[*row[:4], classes.index(row[4])] for row in labels[name]], np.float32).reshape(-1, 5)
        for name in names
    ]
    floor, threshold, rate = calibrate.choose_box_judge(local, answers, truths, classes, judge, args.target_escalation)
    logger.info(
        "demo: %d calibration scenes: box_floor %.2f, box_threshold %.2f escalates %.0f%%",
        len(local),
        floor,
        threshold,
        rate * 100,
    )
    return floor, threshold, rate


def _scene(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not an image")
    return image


def _png(image: np.ndarray) -> EncodedImage:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("a calibration scene did not encode")
    return EncodedImage("image/png", data.tobytes(), int(image.shape[1]), int(image.shape[0]))


def _stay(console: str) -> None:
    """--stay: the stream has ended; the hub, the device (still sending heartbeats) and the console stay up."""
    print(f"demo: the stream has ended; the hub and the device stay up for the console ({console}) until Ctrl-C",
          flush=True)  # fmt: skip
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("demo: stopping", flush=True)


def run_demo(args: argparse.Namespace) -> int:
    if args.secure and args.broker == "embedded":
        print("tandem demo: --secure needs Mosquitto (its TLS listeners and ACL), not the embedded broker")
        return 2
    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as tmp:
        work = Path(tmp)
        workload = (detection_workload if args.workload == "detection" else digits_workload)(args, work)
        if isinstance(workload, str):
            print(f"tandem demo: {workload}")
            return 2
        secure = _Secure(work) if args.secure else None
        broker = MosquittoBroker(free_port(), tls=secure.broker_files) if secure else _broker(args.broker, free_port())
        hub = HubConfig(
            model_path=workload.hub_model,
            http_port=free_port(),
            grpc_port=free_port(),
            mqtt_port=secure.broker_files.hub_port if secure else broker.port,
            trace_store_path=work / "hub.db",
            orchestrator=_orchestrator(args),
            fleet=FleetConfig(operators=secure.operators if secure else {}),
        )
        edge = workload.edge.model_copy(
            update={"transport": GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}"), "mqtt": MqttConfig(port=broker.port)}
        )
        started = time.monotonic()
        with broker:
            logger.info("demo: %s broker on port %d", type(broker).__name__, broker.port)
            if secure is not None:
                security = secure.hub_security(getattr(broker, "pid", None))
                hub = hub.model_copy(update={"security": security})
            start_hub(hub)
            try:
                hub_s = time.monotonic() - started
                url = hub.public_url()
                if secure is not None:
                    edge = secure.enrol(edge, url, security.grpc_port)
                printer = DecisionPrinter(url, token=secure.token if secure else None, ca=secure.ca if secure else None)
                login = f"log in with the token {secure.token}" if secure else "open: the demo configures no operators"
                print(f"console: {url}/console/ ({login})", flush=True)
                with printer, EdgeRuntime(edge) as runtime:
                    t0 = time.monotonic()
                    frames = runtime.run(max_frames=args.frames)
                    resolved = runtime.wait_resolved(args.deadline_ms / 1000.0 + 5.0)
                    run_s = time.monotonic() - t0
                    summary = summarize(runtime.store)
                    about = {**workload.about, **_sent(runtime)} if workload.about else {}
                    if args.stay:
                        _stay(f"{url}/console/")
                over_tls = secure.described(edge.mqtt.port) if secure is not None else None
            finally:
                stop_hub()
    logger.info("demo: hub up in %.1f s; %d frames and their verdicts in %.1f s", hub_s, frames, run_s)
    if args.json:
        print(json.dumps({**summary.as_dict(), **about, **({"tls": over_tls} if over_tls else {})}))
    else:
        print(format_table(summary))
        for key, value in about.items():
            print(f"{key:<28} {value}")
        if over_tls is not None:
            print("\n".join(f"over TLS, {what}: {how}" for what, how in over_tls.items()))
    if not resolved or summary.unresolved:
        logger.error("demo: %d escalated frames have neither a verdict nor a fallback", summary.unresolved)
        return 1
    return 0
