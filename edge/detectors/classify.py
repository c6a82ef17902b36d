"""Classification on any backend: frame -> the model's declared input -> class scores -> ``Prediction``."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edge.detectors.base import Detector
from edge.detectors.preprocess import image_to_nchw
from edge.detectors.runner import Runner, read_model_info
from edge.errors import DetectorError
from protocol.messages import Prediction


class ClassifierHead:
    """Pre- and post-processing of a classifier around its runner."""

    def __init__(self, path: Path, runner: Runner) -> None:
        self.runner = runner
        self.info = read_model_info(path, runner=runner)
        if not self.info.labels:
            raise DetectorError(f"{path}: missing or bad tandem.* metadata: no tandem.labels")

    def tensor(self, image: np.ndarray) -> np.ndarray:
        try:
            return image_to_nchw(image, self.runner.input_shape)
        except (ValueError, cv2.error) as exc:
            raise DetectorError(
                f"{self.info.model_id}: cannot prepare a {getattr(image, 'shape', '?')} image: {exc}"
            ) from exc

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_tensors([self.tensor(image)])[0]

    def predict_tensors(self, tensors: list[np.ndarray]) -> list[Prediction]:
        """Prepared [1, C, H, W] tensors run as one batch; each prediction carries the batch's time."""
        started = time.perf_counter()
        rows = self.runner.run(np.concatenate(tensors) if len(tensors) > 1 else tensors[0])
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if rows.shape != (len(tensors), len(self.info.labels)):
            raise DetectorError(
                f"{self.info.model_id}: {rows.shape} scores for {len(tensors)} x {len(self.info.labels)}"
            )
        return [
            Prediction(self.info.model_id, self.info.version, self.info.labels, tuple(row.tolist()), elapsed_ms)
            for row in rows
        ]


class Classifier(Detector):
    kind = "classification"

    def start(self) -> None:
        self._head = ClassifierHead(self.config.model_path, self.make_runner(self.config.model_path, "scores"))
        self.warm_up()

    def blank(self) -> np.ndarray:
        _, channels, height, width = self._head.runner.input_shape
        return np.zeros((height, width) if channels == 1 else (height, width, 3), dtype=np.uint8)

    def infer(self, image: np.ndarray) -> Prediction:
        return self._head.predict(image)

    def describe(self) -> str:
        return f"{self._head.info.model_id} v{self._head.info.version}"
