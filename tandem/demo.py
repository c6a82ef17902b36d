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
import tempfile
import time
from pathlib import Path
from typing import Optional, Union

import cv2

from cloud.app import start_hub, stop_hub
from cloud.config import HubConfig
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
from edge.judge import calibrate
from edge.summary import format_table, summarize
from tandem.broker import EmbeddedBroker, MosquittoBroker, find_mosquitto, free_port

logger = logging.getLogger(__name__)

DEVICE_ID = "demo-cam-1"
DEFAULT_FPS = 30.0  # when the video does not say its rate


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


def run_demo(args: argparse.Namespace) -> int:
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
        print(f"tandem demo: missing {', '.join(missing)}; build them with: python -m tools.demo_models {models}")
        return 2
    weak = DetectorConfig(model_path=models / "models" / "digits-weak.onnx")
    threshold = args.threshold if args.threshold is not None else _calibrated_threshold(weak, models, args)
    with tempfile.TemporaryDirectory(prefix="tandem-demo-") as tmp:
        work = Path(tmp)
        broker = _broker(args.broker, free_port())
        hub = HubConfig(
            model_path=models / "models" / "digits-strong.onnx",
            http_port=free_port(),
            grpc_port=free_port(),
            mqtt_port=broker.port,
            trace_store_path=work / "hub.db",
        )
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
            transport=GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}"),
            mqtt=MqttConfig(port=broker.port),
            escalation=EscalationConfig(deadline_ms=args.deadline_ms),
            service=ServiceConfig(http_port=0),
        )
        started = time.monotonic()
        with broker:
            logger.info("demo: %s broker on port %d", type(broker).__name__, broker.port)
            start_hub(hub)
            try:
                hub_s = time.monotonic() - started
                with EdgeRuntime(edge) as runtime:
                    t0 = time.monotonic()
                    frames = runtime.run(max_frames=args.frames)
                    resolved = runtime.wait_resolved(args.deadline_ms / 1000.0 + 5.0)
                    run_s = time.monotonic() - t0
                    summary = summarize(runtime.store)
            finally:
                stop_hub()
    logger.info("demo: hub up in %.1f s; %d frames and their verdicts in %.1f s", hub_s, frames, run_s)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(format_table(summary))
    if not resolved or summary.unresolved:
        logger.error("demo: %d escalated frames have neither a verdict nor a fallback", summary.unresolved)
        return 1
    return 0
