"""The device runtime's frame rate against bare ONNX Runtime, at three model costs, with everything running.

fps_ratio_1ms, _5ms, _12ms   frames/s of ``EdgeRuntime.run`` over 640x480 camera frames ÷ the same frames through
                             bare ONNX Runtime (the same resize and session: ``image_to_nchw`` + ``run``), on
                             three convolutional classifiers this script builds and sizes by measurement to
                             about 1, 5 and 12 ms per frame. The runtime runs whole: the outbox worker sends
                             each escalation over a loopback transport, which answers it with a verdict a few
                             ms later (``on_result``: stored, applied, settled), the health server is off. 15% of
                             frames are escalated (a random audit, so the share is set, not a property of the
                             model), as JPEG. Interleaved passes; the median ratio of the passes.
                             fps_ratio_*_in_turn: the same runtime with ``detector.pipelined`` off.
overhead_mean_us, _p50, _p90 per frame, the runtime's time minus the model's, on the 1 ms model, frames kept local
overhead_escalated_mean_us   the same for escalated frames (JPEG encode and the durable enqueue)
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from common.inference.onnx import OrtRunner
from common.inference.preprocess import image_to_nchw
from edge.app import EdgeRuntime
from edge.comms.transport import Transport
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
from edge.detectors.base import Detector
from edge.sources import Frame
from protocol.codec import decode_request, encode_result
from protocol.messages import AckStatus, EscalationAck, EscalationResult, Prediction, ResultStatus

FRAME = (640, 480)
INPUT = 128  # the classifiers' input side: a light edge model's
TARGETS_MS = (1.0, 5.0, 12.0)
ESCALATED_SHARE = 0.15
LABELS = [str(i) for i in range(10)]


def build_conv(path: Path, width: int, blocks: int) -> Path:
    """A classifier with the Tandem contract: image [N,3,128,128] (0-255) -> scores [N,10]; random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width * 31 + blocks)
    inits, nodes = [], []
    channels, x = 3, "image"
    nodes.append(helper.make_node("Mul", [x, "scale"], ["x0"]))
    inits.append(numpy_helper.from_array(np.array(1 / 255.0, dtype=np.float32), "scale"))
    x = "x0"
    for i in range(blocks + 2):
        stride = 2 if i < 2 else 1
        w = (rng.standard_normal((width, channels, 3, 3)) * np.sqrt(2 / (channels * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, channels = f"r{i}", width
    fc = (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        f"conv-{width}x{blocks}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (
        ("tandem.model_id", f"conv-{width}x{blocks}"),
        ("tandem.model_version", "1"),
        ("tandem.labels", json.dumps(LABELS)),
    ):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def _model_ms(path: Path, frames: list[np.ndarray]) -> float:
    runner = OrtRunner(path)
    tensors = [image_to_nchw(f, runner.input_shape) for f in frames[:20]]
    for t in tensors:
        runner.run(t)
    times = []
    for t in tensors * 3:
        started = time.perf_counter()
        runner.run(t)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def sized_models(work: Path, frames: list[np.ndarray]) -> dict[float, tuple[Path, float]]:
    """For each target cost, the built model whose measured time per frame is nearest it."""
    candidates = []
    for width, blocks in ((8, 0), (12, 0), (16, 0), (16, 1), (24, 1), (32, 2), (48, 3), (64, 4), (96, 4), (128, 4)):
        path = build_conv(work / f"conv-{width}x{blocks}.onnx", width, blocks)
        candidates.append((path, _model_ms(path, frames)))
    chosen = {}
    for target in TARGETS_MS:
        chosen[target] = min(candidates, key=lambda c: abs(np.log(c[1] / target)))
    return chosen


def camera_frames(count: int = 120, seed: int = 3) -> list[np.ndarray]:
    """640x480 BGR frames: noise, blur and shapes, decoded (the source's decoding is the same for both sides)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        image = rng.normal(100, 30, (FRAME[1], FRAME[0], 3)).clip(0, 255).astype(np.uint8)
        image = cv2.GaussianBlur(image, (7, 7), 0)
        for _ in range(3):
            center = (int(rng.integers(0, FRAME[0])), int(rng.integers(0, FRAME[1])))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.circle(image, center, int(rng.integers(10, 80)), color, -1)
        frames.append(image)
    return frames


class LoopbackHub(Transport):
    """The hub's side of an escalation, in this process: each request is acknowledged at once and answered with a
    SUCCESS verdict ``delay_s`` later, through the runtime's own ``on_result`` (stored, applied, settled)."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.runtime: Optional[EdgeRuntime] = None
        self._delay = delay_s
        self._queue: list[tuple[float, bytes]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self.answered = 0
        self._thread = threading.Thread(target=self._answer, name="loopback-hub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, trace_id: str, payload: bytes) -> Optional[EscalationAck]:
        request = decode_request(payload)
        final = Prediction("hub", "7", tuple(LABELS), tuple([0.02] * 7 + [0.82] + [0.02] * 2))
        result = EscalationResult(request.trace_id, request.device_id, ResultStatus.SUCCESS, (final,), final)
        with self._cond:
            self._queue.append((time.monotonic() + self._delay, encode_result(result)))
            self._cond.notify()
        return EscalationAck(trace_id, AckStatus.ACCEPTED)

    def _answer(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                due, payload = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._queue.pop(0)
            if self.runtime is not None:
                self.runtime.on_result(payload, acknowledge=False)
                self.answered += 1

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()


class TimedDetector(Detector):
    """The runtime's detector, timing each of its model calls (to take the model out of the runtime's time)."""

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


def _runtime(work: Path, model: Path, name: str, pipelined: bool = True) -> tuple[EdgeRuntime, LoopbackHub]:
    hub = LoopbackHub()
    config = EdgeConfig(
        device_id=f"bench-{name}",
        state_path=work / f"{name}.db",
        source=SourceConfig(kind="images", path=work),  # the bench hands its frames to run_frames()
        detector=DetectorConfig(model_path=model, pipelined=pipelined),
        judge=JudgeConfig(confidence_threshold=0.0, audit_rate=ESCALATED_SHARE, audit_seed=11),
        escalation=EscalationConfig(image_format="jpeg"),  # a camera's frame, as a camera device sends it
        transport=GrpcConfig(target="127.0.0.1:9", timeout_ms=200),
        mqtt=MqttConfig(port=9, connect_timeout_ms=200),
        service=ServiceConfig(http_port=None),
    )
    runtime = EdgeRuntime(config, transport=hub)
    hub.runtime = runtime
    runtime.start()
    return runtime, hub


def _frames_of(images: list[np.ndarray]) -> list[Frame]:
    return [Frame("bench", i, time.time(), image) for i, image in enumerate(images)]


def fps_by_cost(work: Path, passes: int = 5) -> tuple[dict[str, float], Path]:
    """The figures, and the ~1 ms model (for ``overhead_stats``)."""
    images = camera_frames()
    models = sized_models(work, images)
    figures: dict[str, float] = {}
    for target, (path, ms) in models.items():
        name = f"{target:g}ms"
        runner = OrtRunner(path)
        sides = {
            "pipelined": _runtime(work, path, f"fps-{name}"),
            "in_turn": _runtime(work, path, f"seq-{name}", pipelined=False),
        }
        rates: dict[str, list[float]] = {"bare": [], "pipelined": [], "in_turn": []}
        try:
            for _ in range(passes):  # interleaved: every side sees the same machine
                started = time.perf_counter()
                for image in images:
                    runner.run(image_to_nchw(image, runner.input_shape))
                rates["bare"].append(len(images) / (time.perf_counter() - started))
                for side, (runtime, _hub) in sides.items():
                    frames = _frames_of(images)
                    started = time.perf_counter()
                    runtime.run_frames(frames)
                    rates[side].append(len(frames) / (time.perf_counter() - started))
            for runtime, _hub in sides.values():
                runtime.wait_resolved(30)
        finally:
            for runtime, hub in sides.values():
                runtime.close()
                hub.close()
        figures[f"model_ms_{name}"] = ms
        figures[f"fps_bare_{name}"] = statistics.median(rates["bare"])
        figures[f"fps_runtime_{name}"] = statistics.median(rates["pipelined"])
        figures[f"fps_ratio_{name}"] = statistics.median(
            [p / b for p, b in zip(rates["pipelined"], rates["bare"], strict=True)]
        )
        figures[f"fps_ratio_{name}_in_turn"] = statistics.median(
            [p / b for p, b in zip(rates["in_turn"], rates["bare"], strict=True)]
        )
        figures[f"verdicts_{name}"] = sides["pipelined"][1].answered
    return figures, models[TARGETS_MS[0]][0]


def overhead_stats(work: Path, model: Path, passes: int = 5) -> dict[str, float]:
    images = camera_frames()
    runtime, hub = _runtime(work, model, "overhead")
    timed = TimedDetector(runtime.detector)
    runtime.models.swap(timed, None)
    timed.start()
    kept, escalated = [], []
    try:
        for _ in range(passes):
            for frame in _frames_of(images):
                started = time.perf_counter()
                state = runtime.process(frame)
                spent = (time.perf_counter() - started - timed.last_s) * 1e6
                (escalated if state is not None and state.value == "PENDING_CLOUD" else kept).append(spent)
        runtime.wait_resolved(30)
    finally:
        runtime.close()
        hub.close()
    kept.sort()
    return {
        "overhead_mean_us": statistics.fmean(kept),
        "overhead_p50_us": kept[len(kept) // 2],
        "overhead_p90_us": kept[int(len(kept) * 0.9)],
        "overhead_escalated_mean_us": statistics.fmean(escalated) if escalated else 0.0,
        "overhead_escalated_share": len(escalated) / (len(kept) + len(escalated)),
    }


def draw(figures: dict[str, float], path: Path) -> None:
    """Frames/s against the model's cost: bare ONNX Runtime, the runtime pipelined and in turn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [f"{t:g}ms" for t in TARGETS_MS]
    cost = [figures[f"model_ms_{n}"] for n in names]
    fig, (rate, ratio) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    rate.plot(cost, [figures[f"fps_bare_{n}"] for n in names], marker="o", label="bare ONNX Runtime (resize + run)")
    rate.plot(cost, [figures[f"fps_runtime_{n}"] for n in names], marker="o", label="EdgeRuntime, pipelined")
    rate.set_xlabel("model time per frame (ms)")
    rate.set_ylabel("frames/s (640x480)")
    rate.legend(fontsize=8)
    rate.grid(alpha=0.3)
    ratio.plot(cost, [figures[f"fps_ratio_{n}"] for n in names], marker="o", label="pipelined")
    ratio.plot(cost, [figures[f"fps_ratio_{n}_in_turn"] for n in names], marker="o", label="in turn")
    ratio.axhline(0.90, color="grey", linestyle="--", linewidth=1, label="goal at 1 ms: 0.90")
    ratio.axhline(0.97, color="grey", linestyle=":", linewidth=1, label="goal at 12 ms: 0.97")
    ratio.set_xlabel("model time per frame (ms)")
    ratio.set_ylabel("runtime fps / bare fps")
    ratio.legend(fontsize=8)
    ratio.grid(alpha=0.3)
    fig.suptitle("The device runtime against bare ONNX Runtime (15% escalated, verdicts coming back)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
