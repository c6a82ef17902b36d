"""``tools/bench edge``'s detection figures: the cascade of the light detector on the device and the strong one
on the hub, on the held-out scenes of ``tools.detection_models``; and what an escalation costs in bytes.

Every frame goes through the device's own parts: the light model as a ``detection`` detector, the judge (the
box policy only, as ``JUDGE``: of the boxes above ``box_floor``, more than half below ``box_threshold``
escalates the frame), and the payload encoder. An escalated frame's payload goes to the hub's own detector
(``cloud.models.load_model``), which answers for the whole frame; a kept frame keeps the light model's boxes.
mAP@0.5 of those answers, over all frames, is set against the strong model's own on every whole frame.

detection_box_floor,        chosen on the calibration scenes as ``tandem demo --workload detection`` does
detection_box_threshold     (``calibrate.choose_box_judge``): for each of FLOORS the highest threshold
                            escalating at most TARGET of them, then the floor whose cascade scores best there
detection_escalation_rate   share of held-out frames escalated at that threshold
detection_map_share         the cascade's mAP@0.5 / the strong model's
detection_map_light         the light model alone; detection_map_strong: the strong one alone
bytes_*                     mean encoded bytes per escalation, and the cascade's mAP share, for the whole frame
                            as PNG and as JPEG (quality 90), and the crop around the doubted boxes (margin 0.5,
                            and 2: crop2) as PNG and as JPEG
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from cloud.models import load_model
from edge.config import DetectorConfig, EscalationConfig, JudgeConfig
from edge.detectors import create_detector
from edge.judge import Judge, JudgeInput, Verdict
from edge.judge.calibrate import boxes_array, choose_box_judge, mean_ap
from edge.payload import encode
from protocol.messages import EscalationRequest, Prediction, new_trace_id
from tools.detection_models import CLASSES

DETECT = Path(".tandem/detect")
LIGHT_CONF = 0.1  # the device keeps boxes from here (a tail for recall)
TARGET = 0.22  # escalation budget the threshold is chosen for on the calibration scenes (the goal allows 25%)
JUDGE = JudgeConfig(confidence_threshold=0.0, max_weak_box_share=0.5)
FLOORS = (0.2, 0.25, 0.3, 0.35, 0.4)  # box_floor candidates, one chosen on the calibration scenes
JPEG_QUALITY = 90
PAYLOADS = {
    "frame_png": EscalationConfig(payload="frame", image_format="png"),
    "frame_jpeg": EscalationConfig(payload="frame", image_format="jpeg", jpeg_quality=JPEG_QUALITY),
    "crop_png": EscalationConfig(payload="boxes", image_format="png"),
    "crop_jpeg": EscalationConfig(payload="boxes", image_format="jpeg", jpeg_quality=JPEG_QUALITY),
    # More context around the doubted boxes: the hub then also finds what the device missed near them.
    "crop2_png": EscalationConfig(payload="boxes", image_format="png", crop_margin=2.0),
    "crop2_jpeg": EscalationConfig(payload="boxes", image_format="jpeg", jpeg_quality=JPEG_QUALITY, crop_margin=2.0),
}


@dataclass(frozen=True)
class Scene:
    image: np.ndarray
    truth: np.ndarray  # [M, 5] x0, y0, x1, y1, class


def scenes(folder: Path) -> list[Scene]:
    labels = json.loads((folder / "labels.json").read_text())
    loaded = []
    for name in sorted(labels):
        image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        rows = [[*box[:4], CLASSES.index(box[4])] for box in labels[name]]
        loaded.append(Scene(image, np.array(rows, np.float32).reshape(-1, 5)))
    return loaded


def as_array(prediction: Prediction) -> np.ndarray:
    return boxes_array(prediction.boxes, CLASSES)


def judge_for(floor: float, threshold: float) -> Judge:
    """The device's judge for a detector: weak boxes escalate (the best class's confidence plays no part)."""
    return Judge.from_config(JUDGE.model_copy(update={"box_floor": floor, "box_threshold": threshold}))


@dataclass
class Cascade:
    answers: list[np.ndarray]
    escalated: int
    bytes_sent: int

    def rate(self) -> float:
        return self.escalated / len(self.answers)

    def mean_bytes(self) -> float:
        return self.bytes_sent / self.escalated if self.escalated else 0.0


class Bench:
    def __init__(self, root: Path = DETECT) -> None:
        self.root = root
        light = root / "models" / "shapes-light.onnx"
        self.light = create_detector(DetectorConfig(kind="detection", model_path=light, conf_threshold=LIGHT_CONF))
        self.light.start()
        self.hub = load_model(root / "models" / "shapes-strong.onnx")
        self.held_out = scenes(root / "stream")
        self.calibration = scenes(root / "calibration")
        self.truths = [s.truth for s in self.held_out]
        self.local = [self.light.predict(s.image) for s in self.held_out]

    def close(self) -> None:
        self.light.close()

    def verdict(
        self, scene: Scene, local: Prediction, payload: EscalationConfig, judge: Judge
    ) -> tuple[Prediction, int]:
        sent = encode(scene.image, payload, judge.uncertain_boxes(local))
        assert sent is not None, "the payload encoder failed on a scene"
        request = EscalationRequest(
            trace_id=new_trace_id(),
            device_id="bench",
            local_prediction=local,
            input=sent.image,
            deadline_ms=5000,
            attributes=sent.attributes,
        )
        [answer] = self.hub.predict_requests([request])
        if isinstance(answer, Exception):
            raise answer
        return answer, sent.size

    def cascade(self, floor: float, threshold: float, payload: EscalationConfig) -> Cascade:
        judge = judge_for(floor, threshold)
        answers, escalated, sent = [], 0, 0
        for scene, local in zip(self.held_out, self.local, strict=True):
            decision = judge.decide(JudgeInput(local, scene.image))
            if decision.verdict is Verdict.ESCALATE:
                verdict, size = self.verdict(scene, local, payload, judge)
                answers.append(as_array(verdict))
                escalated, sent = escalated + 1, sent + size
            else:
                answers.append(as_array(local))
        return Cascade(answers, escalated, sent)

    def choose(self, target: float = TARGET) -> tuple[float, float]:
        """The judge's floor and box threshold from the calibration scenes (``calibrate.choose_box_judge``, as
        ``tandem demo --workload detection`` does): the hub's answers there stand in for the escalated ones."""
        local = [self.light.predict(s.image) for s in self.calibration]
        hub = self.hub_answers(self.calibration, local)
        truths = [s.truth for s in self.calibration]
        floor, threshold, _ = choose_box_judge(local, hub, truths, CLASSES, JUDGE, target, FLOORS)
        return floor, threshold

    def hub_answers(self, scenes: list[Scene], local: list[Prediction]) -> list[Prediction]:
        """The strong model on every whole frame, as the hub runs it."""
        frame = PAYLOADS["frame_png"]
        return [self.verdict(s, p, frame, judge_for(0.0, 1.0))[0] for s, p in zip(scenes, local, strict=True)]


def measure(root: Path = DETECT, plot: Optional[Path] = None) -> dict[str, float]:
    bench = Bench(root)
    try:
        strong_map = mean_ap([as_array(p) for p in bench.hub_answers(bench.held_out, bench.local)], bench.truths)
        light_map = mean_ap([as_array(p) for p in bench.local], bench.truths)
        floor, threshold = bench.choose()
        figures = {
            "detection_box_floor": floor,
            "detection_box_threshold": threshold,
            "detection_map_light": light_map,
            "detection_map_strong": strong_map,
        }
        for name, payload in PAYLOADS.items():
            run = bench.cascade(floor, threshold, payload)
            share = mean_ap(run.answers, bench.truths) / strong_map
            if name == "frame_png":
                figures["detection_escalation_rate"] = run.rate()
                figures["detection_map_share"] = share
            figures[f"bytes_{name}"] = run.mean_bytes()
            figures[f"bytes_{name}_map_share"] = share
        if plot is not None:
            curve = [(0.0, light_map / strong_map)]
            for t in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9):
                if t > floor:
                    run = bench.cascade(floor, t, PAYLOADS["frame_png"])
                    curve.append((run.rate(), mean_ap(run.answers, bench.truths) / strong_map))
            draw(curve, (figures["detection_escalation_rate"], figures["detection_map_share"]), plot)
        return figures
    finally:
        bench.close()


def draw(curve: Sequence[tuple[float, float]], chosen: tuple[float, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = sorted(curve)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="cascade (box threshold swept)")
    ax.scatter([chosen[0]], [chosen[1]], color="red", zorder=3, label="chosen on the calibration scenes")
    ax.axhline(0.97, color="grey", linestyle="--", linewidth=1, label="goal: 0.97 of the strong model")
    ax.axvline(0.25, color="grey", linestyle=":", linewidth=1, label="goal: at most 25% escalated")
    ax.set_xlabel("share of frames escalated to the hub")
    ax.set_ylabel("mAP@0.5 / strong model's")
    ax.set_title("Detection cascade: light on the device, strong on the hub")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
