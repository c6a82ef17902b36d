"""OpenCV: the DNN module as a runner for ONNX models, and Haar cascades (plates, faces) as a detector.

OpenCV DNN runs standard ONNX operators on the CPU (or CUDA in an OpenCV
built with it); ``ai.onnx.ml`` operators (scikit-learn exports) it cannot load,
and it says so. The Haar cascades are the ones OpenCV ships in
``cv2.data.haarcascades``; their detections carry OpenCV's level weights,
squashed to 0-1 with a logistic so the judge's box thresholds apply.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from edge.detectors.base import Detector
from edge.detectors.runner import Dim, Runner
from edge.errors import DetectorError
from protocol.messages import Box, Prediction


class OpenCvRunner(Runner):
    def __init__(self, path: Path, input_shape: Sequence[Dim], output: Optional[str] = None) -> None:
        try:
            self._net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise DetectorError(f"OpenCV DNN cannot load {path}: {str(exc).strip().splitlines()[-1]}") from exc
        self.input_shape = list(input_shape)
        self._output = output
        self._path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            self._net.setInput(np.ascontiguousarray(batch))
            return np.asarray(self._net.forward(self._output) if self._output else self._net.forward())
        except cv2.error as exc:
            raise DetectorError(f"{self._path.name}: OpenCV DNN failed: {exc}") from exc


def cascade_path(name: str) -> Path:
    """A cascade file: a path, or a name in OpenCV's bundled cascades (``haarcascade_russian_plate_number.xml``)."""
    path = Path(name)
    return path if path.exists() else Path(cv2.data.haarcascades) / name


class HaarCascade(Detector):
    """Boxes from an OpenCV Haar cascade; labels/scores hold the best box's score for the one class."""

    kind = "haar_cascade"

    def start(self) -> None:
        path = cascade_path(str(self.config.model_path))
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise DetectorError(f"cannot load Haar cascade {path}")
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
            raise DetectorError(f"Haar cascade failed: {exc}") from exc
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        boxes = tuple(
            Box(float(x), float(y), float(x + w), float(y + h), self._label, 1.0 / (1.0 + math.exp(-float(wt))))
            for (x, y, w, h), wt in zip(rects, np.ravel(weights), strict=True)
        )
        best = max((b.score for b in boxes), default=0.0)
        return Prediction(
            f"haar:{self._label}", "opencv-" + cv2.__version__, (self._label,), (best,), elapsed_ms, boxes=boxes
        )
