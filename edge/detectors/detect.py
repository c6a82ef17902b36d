"""Object detection (YOLOv8/YOLO11 ONNX exports) as a detector kind: the shared head (``common.inference.detect``)
on whichever backend the config names; the accepted output layouts are listed there."""

from __future__ import annotations

import numpy as np

from common.errors import InferenceError
from common.inference.detect import DetectionHead, DetectionSettings
from edge.detectors.base import Detector
from protocol.messages import Prediction


class Detection(Detector):
    """Boxes of objects; labels/scores hold each class's best box score (all 0: nothing found)."""

    kind = "detection"

    def start(self) -> None:
        config = self.config
        settings = DetectionSettings(config.conf_threshold, config.iou_threshold, config.max_detections)
        self._head = DetectionHead(config.model_path, self.make_runner(config.model_path), config.labels, settings)
        self.warm_up()

    def blank(self) -> np.ndarray:
        return np.zeros((self._head.height, self._head.width, 3), dtype=np.uint8)

    def infer(self, image: np.ndarray) -> Prediction:
        return self._head.predict(image)

    def predict_many(self, images: list[np.ndarray]) -> list[Prediction]:
        """One run for all when the model's batch axis is open (``DetectionHead.predict_many``)."""
        if not self._started:
            raise InferenceError("detector used before start()")
        return self._head.predict_many(images)

    def describe(self) -> str:
        return f"{self._head.model_id} v{self._head.version} ({len(self._head.labels)} classes)"
