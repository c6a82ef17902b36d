"""Haar cascades (plates, faces) as a detector kind: OpenCV's boxes, no backend needed.

The cascades are the ones OpenCV ships in ``cv2.data.haarcascades``; their
detections carry OpenCV's level weights, squashed to 0-1 with a logistic so
the judge's box thresholds apply.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np

from common.errors import InferenceError
from edge.detectors.base import Detector
from protocol.messages import Box, Prediction


def cascade_path(name: str) -> Path:
    """A cascade file: a path, or a name in OpenCV's bundled cascades (``haarcascade_russian_plate_number.xml``)."""
    path = Path(name)
    return path if path.exists() else Path(cv2.data.haarcascades) / name  # type: ignore[attr-defined]  # cv2's stubs omit cv2.data


class HaarCascade(Detector):
    """Boxes from an OpenCV Haar cascade; labels/scores hold the best box's score for the one class."""

    kind = "haar_cascade"

    def start(self) -> None:
        path = cascade_path(str(self.config.model_path))
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise InferenceError(f"cannot load Haar cascade {path}")
        self._label = self.config.labels[0] if self.config.labels else path.stem.replace("haarcascade_", "")
        self.warm_up()

    def infer(self, image: np.ndarray) -> Prediction:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        started = time.perf_counter()
        try:
            rects, _, weights = self._cascade.detectMultiScale3(
                grey, scaleFactor=1.1, minNeighbors=3, outputRejectLevels=True
            )
        except cv2.error as exc:
            raise InferenceError(f"Haar cascade failed: {exc}") from exc
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        boxes = tuple(
            Box(float(x), float(y), float(x + w), float(y + h), self._label, 1.0 / (1.0 + math.exp(-float(wt))))
            for (x, y, w, h), wt in zip(rects, np.ravel(weights), strict=True)
        )
        best = max((b.score for b in boxes), default=0.0)
        return Prediction(
            f"haar:{self._label}", "opencv-" + cv2.__version__, (self._label,), (best,), elapsed_ms, boxes=boxes
        )
