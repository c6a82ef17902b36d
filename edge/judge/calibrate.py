"""Pick the judge's confidence threshold from a labelled stream.

    tandem edge calibrate --config edge.yaml --source calib/images --labels calib/labels.csv \\
        --target-escalation 0.15 [--strong-model strong.onnx] [--ood] [--write]

Every frame goes through the device's detector and every enabled policy but
the confidence threshold; the threshold is then swept over the frames'
confidences. A frame is escalated when another policy escalates it or its
confidence is below the threshold. For each threshold:

    escalated   share of frames sent to the hub
    edge        accuracy of the device's own answers on every frame
    kept        accuracy of the answers the device keeps
    cascade     accuracy when escalated frames take the hub's answer: the strong
                model's when --strong-model is given, otherwise assumed right (an
                upper bound, and labelled so)

The chosen point is the highest threshold within the target escalation rate,
or the lowest escalation rate that reaches the target accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from common.errors import ConfigError, InferenceError
from edge.config import EdgeConfig, JudgeConfig, OodConfig, SourceConfig
from edge.detectors.base import Detector
from edge.judge.judge import Judge, build_policies
from edge.judge.policies import Blur, JudgeInput, Verdict, grey
from edge.sources import open_source
from protocol.messages import Box, Prediction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One labelled frame as the calibration sees it."""

    confidence: float
    edge_correct: bool
    escalated_anyway: bool
    """Another enabled policy escalates it whatever the threshold."""
    hub_correct: Optional[bool]
    """Whether the strong model got it right; None when no strong model was given."""


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    escalation_rate: float
    edge_accuracy: float
    kept_accuracy: float
    cascade_accuracy: float


@dataclass(frozen=True)
class StreamStats:
    """Frame statistics of the calibration stream, for the OOD and blur policies."""

    brightness_mean: float
    brightness_std: float
    contrast_mean: float
    contrast_std: float
    sharpness_p5: float
    sharpness_p50: float

    def ood(self, z_tolerance: float = 3.0) -> OodConfig:
        return OodConfig(
            brightness_mean=round(self.brightness_mean, 3),
            brightness_std=round(max(self.brightness_std, 1.0), 3),
            contrast_mean=round(self.contrast_mean, 3),
            contrast_std=round(max(self.contrast_std, 1.0), 3),
            z_tolerance=z_tolerance,
        )


def operating_point(samples: Sequence[Sample], threshold: float) -> OperatingPoint:
    n = len(samples)
    escalated = [s.escalated_anyway or s.confidence < threshold for s in samples]
    kept = [s for s, e in zip(samples, escalated, strict=True) if not e]
    hub_right = [s.hub_correct if s.hub_correct is not None else True for s in samples]
    final_right = [h if e else s.edge_correct for s, e, h in zip(samples, escalated, hub_right, strict=True)]
    return OperatingPoint(
        threshold=threshold,
        escalation_rate=sum(escalated) / n,
        edge_accuracy=sum(s.edge_correct for s in samples) / n,
        kept_accuracy=sum(s.edge_correct for s in kept) / len(kept) if kept else 1.0,
        cascade_accuracy=sum(final_right) / n,
    )


def sweep(samples: Sequence[Sample]) -> list[OperatingPoint]:
    """One point per distinct threshold that changes the outcome, escalation rising."""
    if not samples:
        raise ConfigError("calibration needs at least one labelled frame")
    # A threshold just above a confidence escalates that frame; 0 escalates none by confidence.
    cuts = sorted({0.0, *(float(np.nextafter(np.float32(s.confidence), np.float32(2))) for s in samples)})
    return [operating_point(samples, t) for t in cuts if t <= 1.0]


def choose(
    points: Sequence[OperatingPoint],
    *,
    target_escalation: Optional[float] = None,
    target_accuracy: Optional[float] = None,
) -> OperatingPoint:
    if target_escalation is not None:
        within = [p for p in points if p.escalation_rate <= target_escalation]
        if not within:
            raise ConfigError(
                f"no threshold keeps escalation within {target_escalation:.1%}: other policies already escalate "
                f"{points[0].escalation_rate:.1%}"
            )
        return max(within, key=lambda p: (p.threshold, -p.escalation_rate))
    if target_accuracy is not None:
        reaching = [p for p in points if p.cascade_accuracy >= target_accuracy]
        if not reaching:
            best = max(p.cascade_accuracy for p in points)
            raise ConfigError(f"no threshold reaches accuracy {target_accuracy:.2%}; the best is {best:.2%}")
        return min(reaching, key=lambda p: (p.escalation_rate, p.threshold))
    raise ConfigError("give a target escalation rate or a target accuracy")


def collect(
    detector: Detector,
    source: SourceConfig,
    judge_config: JudgeConfig,
    strong: Optional[Detector] = None,
) -> tuple[list[Sample], StreamStats]:
    """Run every labelled frame through the detector (and the strong model) and the non-threshold policies."""
    others = Judge(build_policies(judge_config, confidence=False))
    samples: list[Sample] = []
    brightness: list[float] = []
    contrast: list[float] = []
    sharpness: list[float] = []
    with open_source(source) as frames:
        for frame in frames.frames():
            if frame.image is None or frame.truth is None:
                logger.warning("calibrate: frame %d skipped (%s)", frame.index, frame.error or "no label")
                continue
            try:
                prediction = detector.predict(frame.image)
                hub = strong.predict(frame.image).label == frame.truth if strong is not None else None
            except InferenceError as exc:
                logger.warning("calibrate: frame %d skipped: %s", frame.index, exc)
                continue
            decision = others.combine(JudgeInput(prediction, frame.image))
            if decision.verdict is Verdict.UNJUDGEABLE:
                continue
            samples.append(Sample(prediction.confidence, prediction.label == frame.truth, decision.escalate, hub))
            g = grey(frame.image).astype(np.float32)
            brightness.append(float(g.mean()))
            contrast.append(float(g.std()))
            sharpness.append(Blur.sharpness(frame.image))
    if not samples:
        raise ConfigError("the calibration stream has no labelled, decodable frames")
    stats = StreamStats(
        float(np.mean(brightness)),
        float(np.std(brightness)),
        float(np.mean(contrast)),
        float(np.std(contrast)),
        float(np.percentile(sharpness, 5)),
        float(np.percentile(sharpness, 50)),
    )
    return samples, stats


def format_table(points: Sequence[OperatingPoint], chosen: OperatingPoint, hub_known: bool) -> str:
    """Rows near every 5% of escalation, and the chosen one marked."""
    rows: list[OperatingPoint] = []
    for target in np.arange(0.0, 0.55, 0.05):
        within = [p for p in points if p.escalation_rate <= target + 1e-9]
        if within:
            rows.append(max(within, key=lambda p: p.threshold))
    rows.append(chosen)
    unique = sorted({p.threshold: p for p in rows}.values(), key=lambda p: p.threshold)
    cascade = "cascade" if hub_known else "cascade*"
    lines = [f"  {'threshold':>9}  {'escalated':>9}  {'edge':>7}  {'kept':>7}  {cascade:>8}"]
    for p in unique:
        mark = "  <- chosen" if p is chosen or p == chosen else ""
        lines.append(
            f"  {p.threshold:9.4f}  {p.escalation_rate:9.1%}  {p.edge_accuracy:7.2%}  {p.kept_accuracy:7.2%}"
            f"  {p.cascade_accuracy:8.2%}{mark}"
        )
    if not hub_known:
        lines.append("  * escalated frames counted as answered right (no --strong-model): an upper bound")
    return "\n".join(lines)


def write_config(path: Path, threshold: float, ood: Optional[OodConfig]) -> None:
    """Set judge.confidence_threshold (and judge.ood) in the YAML file; other keys are kept (comments are not)."""
    raw: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    judge = raw.setdefault("judge", {})
    judge["confidence_threshold"] = threshold
    if ood is not None:
        judge["ood"] = ood.model_dump()
    EdgeConfig.model_validate(raw)  # never write a file that no longer loads
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


# -- detectors: the box threshold -------------------------------------------------------------------------------


def box_thresholds(
    predictions: Sequence[Prediction], judge: JudgeConfig, thresholds: Sequence[float]
) -> list[tuple[float, float]]:
    """For each candidate ``box_threshold``, the share of these detector answers the judge escalates (every
    other field of ``judge`` as given; its ``max_weak_box_share`` must turn the box policy on)."""
    if judge.max_weak_box_share >= 1:
        raise ConfigError("max_weak_box_share is 1, which turns the box policy off: nothing to calibrate")
    rates = []
    for threshold in thresholds:
        decide = Judge.from_config(judge.model_copy(update={"box_threshold": threshold})).combine
        escalated = sum(decide(JudgeInput(p)).escalate for p in predictions)
        rates.append((float(threshold), escalated / max(1, len(predictions))))
    return rates


def choose_box_threshold(
    predictions: Sequence[Prediction], judge: JudgeConfig, target_escalation: float, step: float = 0.01
) -> tuple[float, float]:
    """The highest ``box_threshold`` that escalates at most ``target_escalation`` of the answers, and its rate."""
    grid = [round(t, 4) for t in np.arange(0.0, 1.0 + step / 2, step)]
    within = [(t, r) for t, r in box_thresholds(predictions, judge, grid) if r <= target_escalation]
    if not within:
        raise ConfigError(f"no box_threshold escalates at most {target_escalation:.0%}: other policies escalate more")
    return within[-1]


def choose_box_judge(
    local: Sequence[Prediction],
    hub: Sequence[Prediction],
    truths: Sequence[np.ndarray],
    labels: Sequence[str],
    judge: JudgeConfig,
    target_escalation: float,
    floors: Sequence[float] = (0.2, 0.25, 0.3, 0.35, 0.4),
) -> tuple[float, float, float]:
    """A detector's ``box_floor`` and ``box_threshold`` from a labelled set: for each floor the highest threshold
    escalating at most ``target_escalation`` of the frames (``choose_box_threshold``), then the floor whose
    cascade (``hub``'s answer where the judge escalates, ``local``'s elsewhere) scores the best mAP@0.5 against
    ``truths`` ([M, 5] x0, y0, x1, y1, class index into ``labels`` per frame). Returns floor, threshold, rate."""
    best: tuple[float, float, float, float] = (-1.0, 0.0, 0.0, 0.0)
    for floor in floors:
        floored = judge.model_copy(update={"box_floor": floor})
        threshold, rate = choose_box_threshold(local, floored, target_escalation)
        decide = Judge.from_config(floored.model_copy(update={"box_threshold": threshold})).combine
        answers = [h if decide(JudgeInput(p)).escalate else p for p, h in zip(local, hub, strict=True)]
        score = mean_ap([boxes_array(a.boxes, labels) for a in answers], truths)
        if score > best[0]:
            best = (score, floor, threshold, rate)
    return best[1], best[2], best[3]


def boxes_array(boxes: Sequence[Box], labels: Sequence[str]) -> np.ndarray:
    """A detector's boxes as [K, 6] x0, y0, x1, y1, score, class index (boxes of other classes left out)."""
    rows = [[b.x0, b.y0, b.x1, b.y1, b.score, labels.index(b.label)] for b in boxes if b.label in labels]
    return np.array(rows, np.float32).reshape(-1, 6)


def box_iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def mean_ap(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], iou: float = 0.5) -> float:
    """mAP@iou over the classes present in ``truths`` (VOC's all-point interpolation).

    ``detections[i]``: [K, 6] x0, y0, x1, y1, score, class for frame i; ``truths[i]``: [M, 5] x0, y0, x1, y1,
    class."""
    classes = sorted({int(c) for t in truths for c in t[:, 4]})
    aps = []
    for c in classes:
        total = sum(int((gts[:, 4] == c).sum()) for gts in truths)
        found = sorted(
            ((float(d[4]), i, d[:4]) for i, dets in enumerate(detections) for d in dets if int(d[5]) == c),
            key=lambda item: -item[0],
        )
        used = [np.zeros(int((gts[:, 4] == c).sum()), bool) for gts in truths]
        hits = []
        for _, i, box in found:
            gts = truths[i][truths[i][:, 4] == c]
            overlaps = [box_iou(box, g[:4]) for g in gts]
            best = int(np.argmax(overlaps)) if overlaps else -1
            hit = best >= 0 and overlaps[best] >= iou and not used[i][best]
            if hit:
                used[i][best] = True
            hits.append(hit)
        tp = np.cumsum(hits)
        recall = tp / total
        precision = tp / np.arange(1, len(hits) + 1)
        r = np.concatenate([[0.0], recall, [1.0]])
        p = np.concatenate([[0.0], precision, [0.0]])
        p = np.maximum.accumulate(p[::-1])[::-1]
        aps.append(float(np.sum((r[1:] - r[:-1]) * p[1:])))
    return float(np.mean(aps)) if aps else 0.0
