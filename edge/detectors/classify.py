"""Classification on any backend: the shared classifier head (``common.inference.classify``) as a detector kind."""

from __future__ import annotations

import numpy as np

from common.inference.classify import SCORES_OUTPUT, ClassifierHead
from edge.detectors.base import Detector
from protocol.messages import Prediction


class Classifier(Detector):
    kind = "classification"

    def start(self) -> None:
        self._head = ClassifierHead(self.config.model_path, self.make_runner(self.config.model_path, SCORES_OUTPUT))
        self.warm_up()

    def blank(self) -> np.ndarray:
        _, channels, height, width = self._head.runner.input_shape
        size = (int(height or 0), int(width or 0))
        return np.zeros(size if channels == 1 else (*size, 3), dtype=np.uint8)

    def infer(self, image: np.ndarray) -> Prediction:
        return self._head.predict(image)

    def describe(self) -> str:
        return f"{self._head.info.model_id} v{self._head.info.version}"
