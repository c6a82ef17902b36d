"""Judge policies: each looks at one input and its prediction and says keep, escalate, or cannot judge.

A policy is small and named and reads only what it needs from ``JudgeInput``.
The judge runs the enabled ones and combines their verdicts (any
``UNJUDGEABLE`` wins, then any ``ESCALATE``); see ``edge.judge.judge``.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Optional

import cv2
import numpy as np

from protocol.messages import Box, Prediction


class Verdict(enum.Enum):
    KEEP = "keep"
    ESCALATE = "escalate"
    UNJUDGEABLE = "unjudgeable"


@dataclass(frozen=True)
class PolicyResult:
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class JudgeInput:
    """What the judge sees for one frame: the model's answer, the frame, the latest sensor values."""

    prediction: Prediction
    image: Optional[np.ndarray] = None
    sensors: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


class Policy(abc.ABC):
    name: str

    @abc.abstractmethod
    def check(self, item: JudgeInput) -> PolicyResult:
        """Judge one input."""


def _keep(reason: str) -> PolicyResult:
    return PolicyResult(Verdict.KEEP, reason)


def _escalate(reason: str) -> PolicyResult:
    return PolicyResult(Verdict.ESCALATE, reason)


class FiniteScores(Policy):
    """Scores that are NaN or infinite cannot be judged; they are never taken as confident."""

    name = "finite_scores"

    def check(self, item: JudgeInput) -> PolicyResult:
        if item.prediction.is_finite:
            return _keep("scores are finite")
        return PolicyResult(Verdict.UNJUDGEABLE, "scores are not finite numbers")


@dataclass(frozen=True)
class ConfidenceThreshold(Policy):
    """Escalate when the top score is below the threshold for the top class (``per_class`` overrides)."""

    threshold: float
    per_class: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    name = "confidence"

    def threshold_for(self, label: str) -> float:
        return self.per_class.get(label, self.threshold)

    def check(self, item: JudgeInput) -> PolicyResult:
        p = item.prediction
        label, confidence = p.label, p.confidence
        limit = self.threshold_for(label)
        if confidence < limit:
            return _escalate(f"{label} at {confidence:.3f} < {limit:.3f}")
        return _keep(f"{label} at {confidence:.3f} >= {limit:.3f}")


@dataclass(frozen=True)
class Margin(Policy):
    """Escalate when the best two classes are closer than ``min_margin``: the model is torn between them."""

    min_margin: float
    name = "margin"

    def check(self, item: JudgeInput) -> PolicyResult:
        scores = item.prediction.scores
        if len(scores) < 2:
            return _keep("one class only")
        first, second = sorted(scores)[-1:-3:-1]
        margin = first - second
        if margin < self.min_margin:
            return _escalate(f"top two {margin:.3f} apart < {self.min_margin:.3f}")
        return _keep(f"top two {margin:.3f} apart")


@dataclass(frozen=True)
class Entropy(Policy):
    """Escalate when the normalised entropy of the scores (0 = certain, 1 = uniform) exceeds ``max_entropy``."""

    max_entropy: float
    name = "entropy"

    @staticmethod
    def normalised(scores: tuple[float, ...]) -> float:
        if len(scores) < 2:
            return 0.0
        total = sum(scores)
        if total <= 0:
            return 1.0
        h = -sum(s / total * math.log(s / total) for s in scores if s > 0)
        return h / math.log(len(scores))

    def check(self, item: JudgeInput) -> PolicyResult:
        h = self.normalised(item.prediction.scores)
        if h > self.max_entropy:
            return _escalate(f"entropy {h:.3f} > {self.max_entropy:.3f}")
        return _keep(f"entropy {h:.3f}")


@dataclass(frozen=True)
class UnknownClasses(Policy):
    """Escalate whenever the top class, or any box's class, is one the model uses for 'unknown' or 'anomaly'."""

    labels: frozenset[str]
    name = "unknown_class"

    def boxes(self, prediction: Prediction) -> list[Box]:
        return [b for b in prediction.boxes if b.label in self.labels]

    def check(self, item: JudgeInput) -> PolicyResult:
        label = item.prediction.label
        if label in self.labels and not item.prediction.boxes:
            return _escalate(f"top class {label!r} means the model does not know")
        unknown = self.boxes(item.prediction)
        if unknown:
            return _escalate(f"{len(unknown)} box(es) of {sorted({b.label for b in unknown})}: the model does not know")
        return _keep(f"top class {label!r} is a known class")


def grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


@dataclass(frozen=True)
class Blur(Policy):
    """Escalate a blurred frame: the variance of its Laplacian (its sharpness) is below ``min_sharpness``.

    The measure grows with edges and texture; a defocused or motion-blurred
    frame scores low. Its scale depends on the camera, so the threshold is
    per deployment (``tandem edge calibrate`` reports the stream's values).
    """

    min_sharpness: float
    name = "blur"

    @staticmethod
    def sharpness(image: np.ndarray) -> float:
        return float(cv2.Laplacian(grey(image), cv2.CV_64F).var())

    def check(self, item: JudgeInput) -> PolicyResult:
        if item.image is None:
            return _keep("no frame to measure")
        value = self.sharpness(item.image)
        if value < self.min_sharpness:
            return _escalate(f"sharpness {value:.1f} < {self.min_sharpness:.1f} (blurred)")
        return _keep(f"sharpness {value:.1f}")


@dataclass(frozen=True)
class BoxThresholds(Policy):
    """Image-level judgement of a detector's boxes (Sedna's IBT).

    Boxes below ``floor`` are background here (a detector keeps a low-scoring tail for recall). Of the rest, a
    box scoring below its class's threshold (``per_class``, else ``box_threshold``) is weak; when more than
    ``max_weak_share`` of them are weak, the image is escalated. A frame with no boxes above the floor is kept:
    it is the confident 'nothing here'.
    """

    box_threshold: float
    max_weak_share: float
    per_class: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    floor: float = 0.0
    name = "boxes"

    def counted(self, prediction: Prediction) -> list[Box]:
        return [b for b in prediction.boxes if b.score >= self.floor]

    def weak(self, prediction: Prediction) -> list[Box]:
        return [b for b in self.counted(prediction) if b.score < self.per_class.get(b.label, self.box_threshold)]

    def check(self, item: JudgeInput) -> PolicyResult:
        boxes = self.counted(item.prediction)
        if not boxes:
            return _keep("no boxes" if not item.prediction.boxes else f"no boxes above {self.floor:.2f}")
        weak = len(self.weak(item.prediction))
        own = " or their class's" if self.per_class else ""
        below = f"{weak}/{len(boxes)} boxes below {self.box_threshold:.2f}{own}"
        if weak / len(boxes) > self.max_weak_share:
            return _escalate(below)
        return _keep(below)


@dataclass(frozen=True)
class OutOfDistribution(Policy):
    """Down-weight the confidence of frames unlike the ones the thresholds were calibrated on.

    The frame's brightness (mean) and contrast (standard deviation) are compared
    with the calibration stream's; z, the larger of the two z-scores, gives the
    weight exp(-(z - z_tolerance)) once z passes ``z_tolerance``. The weighted
    confidence is then held to the confidence threshold. A camera that is
    suddenly dark, washed out or covered is escalated even when the model is sure.
    """

    brightness_mean: float
    brightness_std: float
    contrast_mean: float
    contrast_std: float
    z_tolerance: float
    confidence: ConfidenceThreshold
    name = "ood"

    def weight(self, image: np.ndarray) -> tuple[float, float]:
        g = grey(image)
        step = max(1, max(g.shape) // 64)  # a 64-pixel view is plenty for two moments
        view = g[::step, ::step].astype(np.float32)
        z_b = abs(float(view.mean()) - self.brightness_mean) / max(self.brightness_std, 1e-6)
        z_c = abs(float(view.std()) - self.contrast_mean) / max(self.contrast_std, 1e-6)
        z = max(z_b, z_c)
        return z, math.exp(-max(0.0, z - self.z_tolerance))

    def check(self, item: JudgeInput) -> PolicyResult:
        if item.image is None:
            return _keep("no frame to compare")
        p = item.prediction
        z, w = self.weight(item.image)
        weighted = p.confidence * w
        limit = self.confidence.threshold_for(p.label)
        if weighted < limit:
            return _escalate(f"z {z:.1f}: confidence {p.confidence:.3f} x {w:.2f} = {weighted:.3f} < {limit:.3f}")
        return _keep(f"z {z:.1f}, weight {w:.2f}")


@dataclass(frozen=True)
class SensorGate(Policy):
    """Escalate every frame while a sensor reads above (or below) a limit, e.g. a door open or a temperature high.

    A sensor that has not reported yet does not gate anything.
    """

    sensor: str
    above: Optional[float] = None
    below: Optional[float] = None
    name = "sensor"

    def check(self, item: JudgeInput) -> PolicyResult:
        value = item.sensors.get(self.sensor)
        if value is None:
            return _keep(f"{self.sensor}: no reading yet")
        if self.above is not None and value > self.above:
            return _escalate(f"{self.sensor} = {value:g} > {self.above:g}")
        if self.below is not None and value < self.below:
            return _escalate(f"{self.sensor} = {value:g} < {self.below:g}")
        return _keep(f"{self.sensor} = {value:g}")
