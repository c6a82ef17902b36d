"""``tools/bench edge``: the device runtime's speed, memory and cascade, each against a baseline in this run.

fps_ratio               frames/s of the runtime's frame path (detector, judge, trace store, outbox) on the
                        PP-OCRv4 text detector ÷ bare ONNX Runtime over the same frames, tensors prepared
                        beforehand. Frames are decoded before either is timed; the escalation worker and
                        the network are not started (sending is off the frame path).
overhead_p50_us         per frame, the runtime's time minus the detector's, on the demo classifier
judge_p99_us            one judge decision, default policies; judge_all_p99_us with every policy on
enqueue_ratio           durable enqueues/s (trace + outbox row, one transaction) ÷ raw single-row SQLite
                        inserts/s, both WAL with synchronous NORMAL
rss_mb                  resident memory of `EdgeRuntime` running the demo stream, in a fresh process
cascade_*               calibrated on the calibration split (15% target), measured on the held-out stream:
                        accuracy ÷ the strong model's, and the share of frames escalated
weak_cost_ratio         strong model's inference time ÷ weak model's (median of single-frame calls)
detection_*, bytes_*    (tools.bench_suite.detection) the detection cascade on the held-out scenes: mAP@0.5 ÷ the
                        strong detector's, the share escalated, and bytes per escalation by payload; the curve
                        is drawn into docs/detection-cascade.png
swap_gap_ratio          (tools.bench_suite.rollout) the longest frame interval while a device takes a bundle ÷ the
                        median interval; rollout_s: rollout start to every device active, probation included
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from common.inference.ocr import normalise
from common.inference.onnx import OrtRunner
from common.inference.preprocess import image_to_nchw
from common.inference.text import det_size
from edge.app import EdgeRuntime
from edge.config import DetectorConfig, EdgeConfig, JudgeConfig, ServiceConfig, SourceConfig
from edge.detectors import create_detector
from edge.detectors.base import Detector
from edge.judge import Judge, JudgeInput, TraceMachine, TraceState, calibrate
from edge.judge.judge import JudgeDecision
from edge.outbox import EdgeStore
from edge.sources import Frame
from protocol.messages import Prediction, new_trace_id
from tools.bench_suite import detection, rollout

DEMO = Path(".tandem/demo")
OCR = Path(".tandem/ocr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with the figures as one JSON line")
    parser.add_argument("--passes", type=int, default=5, help="timed passes over the stream per measurement")


class TimedDetector(Detector):
    """Wraps a detector and keeps the time of its last ``predict`` (to take it out of the runtime's)."""

    kind = "timed"

    def __init__(self, inner: Detector) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.last_s = 0.0

    def start(self) -> None:
        self.inner.start()
        self._started = True

    def infer(self, image: np.ndarray) -> Prediction:
        started = time.perf_counter()
        prediction = self.inner.predict(image)
        self.last_s = time.perf_counter() - started
        return prediction

    def close(self) -> None:
        self.inner.close()


def _frames(split: str = "stream") -> list[Frame]:
    paths = sorted((DEMO / split / "images").iterdir())
    return [Frame("bench", i, time.time(), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for i, p in enumerate(paths)]


def _runtime(work: Path, detector: DetectorConfig, judge: JudgeConfig, name: str) -> EdgeRuntime:
    config = EdgeConfig(
        device_id="bench",
        state_path=work / f"{name}.db",
        source=SourceConfig(kind="images", path=DEMO / "stream" / "images"),
        detector=detector,
        judge=judge,
        service=ServiceConfig(http_port=None),
    )
    runtime = EdgeRuntime(config)
    runtime.store.open()  # the frame path only: no worker, no broker, no health server
    runtime.detector.start()
    return runtime


def _best_rate(n: int, passes: int, run_pass: Callable[[], None]) -> float:
    """Frames per second of the fastest pass (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        run_pass()
        best = min(best, time.perf_counter() - started)
    return n / best


FPS_DET_SIDE = 320  # the text detector sees 320 x 320: a camera-sized input, not the 32-pixel digit itself
# For a detector, the box policy judges the image (Sedna's IBT); a top-class confidence threshold would
# escalate every frame without text. The digits hold no text the detector finds, so a 15% random audit
# puts the escalation path (encode, durable enqueue) into the figure at a realistic share.
FPS_JUDGE = JudgeConfig(
    confidence_threshold=0.0, box_threshold=0.6, max_weak_box_share=0.5, audit_rate=0.15, audit_seed=7
)


def fps(work: Path, frames: list[Frame], passes: int) -> dict[str, float]:
    det_path = OCR / "ch_PP-OCRv4_det_infer.onnx"
    config = DetectorConfig(kind="text_detection", model_path=det_path, det_min_side=FPS_DET_SIDE)
    runtime = _runtime(work, config, FPS_JUDGE, "fps")
    runner = OrtRunner(det_path)
    detector = create_detector(config)
    detector.start()
    tensors = []
    for f in frames:
        h, w = det_size(*f.image.shape[:2], config.det_min_side, config.det_max_side)
        tensors.append(normalise(cv2.resize(f.image, (w, h))))
    bare = detector_fps = runtime_fps = 0.0
    for _ in range(passes):  # interleaved, so all three see the same machine
        bare = max(bare, _best_rate(len(tensors), 1, lambda: [runner.run(t) for t in tensors]))
        detector_fps = max(
            detector_fps, _best_rate(len(frames), 1, lambda: [detector.predict(f.image) for f in frames])
        )
        runtime_fps = max(runtime_fps, _best_rate(len(frames), 1, lambda: [runtime.process(f) for f in frames]))
    escalated = runtime.store.depth().rows
    runtime.detector.close()
    runtime.store.close()
    return {
        "fps_bare": bare,
        "fps_detector": detector_fps,
        "fps_runtime": runtime_fps,
        "fps_ratio": runtime_fps / bare,
        "fps_ratio_vs_detector": runtime_fps / detector_fps,
        "light_model_ms": 1000.0 / bare,
        "fps_escalated_share": escalated / (len(frames) * passes),
    }


def _threshold() -> float:
    weak = create_detector(DetectorConfig(model_path=DEMO / "models" / "digits-weak.onnx"))
    weak.start()
    calib = SourceConfig(
        kind="images", path=DEMO / "calibration" / "images", labels_csv=DEMO / "calibration" / "labels.csv"
    )
    samples, _ = calibrate.collect(weak, calib, JudgeConfig())
    return calibrate.choose(calibrate.sweep(samples), target_escalation=0.15).threshold


def overhead(work: Path, frames: list[Frame], passes: int, threshold: float) -> dict[str, float]:
    runtime = _runtime(
        work,
        DetectorConfig(model_path=DEMO / "models" / "digits-weak.onnx"),
        JudgeConfig(confidence_threshold=threshold),
        "overhead",
    )
    timed = TimedDetector(runtime.detector)
    runtime.models.swap(timed, None)  # the frame loop now runs the timed wrapper
    timed.start()
    samples = []
    for _ in range(passes):
        for f in frames:
            started = time.perf_counter()
            runtime.process(f)
            samples.append(time.perf_counter() - started - timed.last_s)
    runtime.store.close()
    us = sorted(s * 1e6 for s in samples)
    return {"overhead_p50_us": us[len(us) // 2], "overhead_p99_us": us[int(len(us) * 0.99)]}


def _p99_us(judge: Judge, items: list[JudgeInput], passes: int) -> float:
    times = []
    decide: Callable[[JudgeInput], JudgeDecision] = judge.decide
    for _ in range(passes):
        for item in items:
            started = time.perf_counter()
            decide(item)
            times.append(time.perf_counter() - started)
    times.sort()
    return times[int(len(times) * 0.99)] * 1e6


def judge_latency(frames: list[Frame], passes: int, threshold: float) -> dict[str, float]:
    weak = create_detector(DetectorConfig(model_path=DEMO / "models" / "digits-weak.onnx"))
    weak.start()
    items = [JudgeInput(weak.predict(f.image), f.image) for f in frames]
    calib = SourceConfig(
        kind="images", path=DEMO / "calibration" / "images", labels_csv=DEMO / "calibration" / "labels.csv"
    )
    _, stats = calibrate.collect(weak, calib, JudgeConfig())
    everything = JudgeConfig(
        confidence_threshold=threshold,
        min_margin=0.05,
        max_entropy=0.5,
        unknown_labels=["unknown"],
        min_sharpness=100.0,
        ood=stats.ood(),
        audit_rate=0.01,
        audit_seed=1,
        max_escalations_per_minute=10_000,
    )
    return {
        "judge_p99_us": _p99_us(Judge.from_config(JudgeConfig(confidence_threshold=threshold)), items, passes),
        "judge_all_p99_us": _p99_us(Judge.from_config(everything), items, passes),
    }


def enqueue(work: Path, count: int = 1000, rounds: int = 8) -> dict[str, float]:
    """Both sides in interleaved rounds of ``count`` writes; each side's fastest round counts."""
    payload = (DEMO / "stream" / "images" / "000000.png").read_bytes() * 4  # about an escalation's size
    conn = sqlite3.connect(work / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # The same key a durable enqueue needs (the trace id, for exactly-once), the same payload.
    conn.execute("CREATE TABLE rows (trace_id TEXT PRIMARY KEY, payload BLOB NOT NULL)")
    store = EdgeStore(work / "enqueue.db", "NORMAL")
    store.open()
    prediction = Prediction("m", "1", ("a", "b"), (0.6, 0.4))
    machine = TraceMachine()
    for state in (TraceState.INFERRED, TraceState.JUDGED, TraceState.PENDING_CLOUD):
        machine.advance(state, state.value, 0.0)

    def raw_round() -> None:
        for key in [new_trace_id() for _ in range(count)]:
            conn.execute("INSERT INTO rows (trace_id, payload) VALUES (?, ?)", (key, payload))

    def durable_round() -> None:
        now = time.time()
        for trace_id in [new_trace_id() for _ in range(count)]:
            store.record_trace(
                trace_id,
                machine,
                source_id="bench",
                frame_index=0,
                truth=None,
                prediction=prediction,
                reasons=("confidence: low",),
                created_at=now,
                escalation=payload,
                deadline_at=now + 5,
                priority=40,
            )

    raw = durable = 0.0
    for _ in range(rounds):
        raw = max(raw, _best_rate(count, 1, raw_round))
        durable = max(durable, _best_rate(count, 1, durable_round))
    conn.close()
    store.close()
    return {"raw_inserts_per_s": raw, "enqueues_per_s": durable, "enqueue_ratio": durable / raw}


RSS_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edge.app import EdgeRuntime
    from edge.config import (DetectorConfig, EdgeConfig, GrpcConfig, JudgeConfig, MqttConfig, ServiceConfig,
                             SourceConfig)
    demo, work, threshold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    config = EdgeConfig(
        device_id="bench-rss", state_path=work / "rss.db",
        source=SourceConfig(kind="images", path=demo / "stream" / "images"),
        detector=DetectorConfig(model_path=demo / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(confidence_threshold=threshold),
        transport=GrpcConfig(target="127.0.0.1:9", timeout_ms=200),
        mqtt=MqttConfig(port=9, connect_timeout_ms=200), service=ServiceConfig(http_port=0))
    with EdgeRuntime(config) as runtime:
        runtime.run()
        time.sleep(0.5)
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        print(int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)
""")


def rss(work: Path, threshold: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(DEMO), str(work), str(threshold)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {"rss_mb": float(out[0]), "rss_peak_mb": float(out[1])}


def cascade() -> dict[str, float]:
    weak = create_detector(DetectorConfig(model_path=DEMO / "models" / "digits-weak.onnx"))
    strong = create_detector(DetectorConfig(model_path=DEMO / "models" / "digits-strong.onnx"))
    weak.start()
    strong.start()

    def split(name: str) -> SourceConfig:
        return SourceConfig(kind="images", path=DEMO / name / "images", labels_csv=DEMO / name / "labels.csv")

    calibration, _ = calibrate.collect(weak, split("calibration"), JudgeConfig(), strong)
    chosen = calibrate.choose(calibrate.sweep(calibration), target_escalation=0.15)
    held_out, _ = calibrate.collect(weak, split("stream"), JudgeConfig(), strong)
    point = calibrate.operating_point(held_out, chosen.threshold)
    strong_accuracy = sum(bool(s.hub_correct) for s in held_out) / len(held_out)
    return {
        "cascade_threshold": chosen.threshold,
        "cascade_escalation_rate": point.escalation_rate,
        "cascade_accuracy": point.cascade_accuracy,
        "edge_accuracy": point.edge_accuracy,
        "strong_accuracy": strong_accuracy,
        "cascade_accuracy_share": point.cascade_accuracy / strong_accuracy,
    }


def cost(frames: list[Frame], repeats: int = 3) -> dict[str, float]:
    result = {}
    for name in ("digits-weak", "digits-strong"):
        runner = OrtRunner(DEMO / "models" / f"{name}.onnx")
        tensors = [image_to_nchw(f.image, runner.input_shape) for f in frames]
        for t in tensors[:50]:
            runner.run(t)
        times = []
        for _ in range(repeats):
            for t in tensors:
                started = time.perf_counter()
                runner.run(t)
                times.append(time.perf_counter() - started)
        result[f"{name}_us"] = statistics.median(times) * 1e6
    result["weak_cost_ratio"] = result["digits-strong_us"] / result["digits-weak_us"]
    return result


GOALS = {
    "fps_ratio": (">=", 0.90),
    "overhead_p50_us": ("<=", 50.0),
    "judge_p99_us": ("<", 100.0),
    "enqueue_ratio": (">=", 0.5),
    "rss_mb": ("<=", 250.0),
    "cascade_accuracy_share": (">=", 0.99),
    "cascade_escalation_rate": ("<=", 0.20),
    "weak_cost_ratio": (">=", 5.0),
    "swap_gap_ratio": ("<=", 1.5),
    "detection_map_share": (">=", 0.97),
    "detection_escalation_rate": ("<=", 0.25),
}


def _met(value: float, op: str, goal: float) -> bool:
    return {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]


def run(args: argparse.Namespace) -> int:
    frames = _frames()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        work = Path(tmp)
        threshold = _threshold()
        figures.update(fps(work, frames, args.passes))
        figures.update(overhead(work, frames, args.passes, threshold))
        figures.update(judge_latency(frames, args.passes, threshold))
        figures.update(enqueue(work))
        figures.update(rss(work, threshold))
    figures.update(cascade())
    figures.update(detection.measure(plot=Path("docs/detection-cascade.png")))
    figures.update(cost(frames))
    with tempfile.TemporaryDirectory(prefix="tandem-bench-rollout-") as tmp:
        sure = Path(tmp) / "digits-again.onnx"  # the same weights as a bundle: the update's mechanics, not a model
        sure.write_bytes((DEMO / "models" / "digits-weak.onnx").read_bytes())
        figures.update(rollout.measure(Path(tmp), DEMO, sure))
    print(f"tools/bench edge: {len(frames)} held-out frames, {args.passes} passes, Python {sys.version.split()[0]}")
    print(f"  {'figure':<26} {'value':>12}  goal")
    for name, value in figures.items():
        goal = GOALS.get(name)
        mark = ""
        if goal is not None:
            mark = f"{goal[0]} {goal[1]:g}  " + ("met" if _met(value, *goal) else "NOT MET")
        print(f"  {name:<26} {value:12.4f}  {mark}")
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in figures.items()}))
    return 0
